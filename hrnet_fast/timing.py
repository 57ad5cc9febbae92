"""Latency measurement that compares implementations fairly.

- Warm-up calls first (cuDNN autotuning, Triton compilation, lazy CUDA graph capture, allocator growth).
- On a GPU each call is bracketed by ``torch.cuda.synchronize`` and timed with CUDA events, so the figure is
  the latency of one forward, launch overhead included, as an inference server sees it.
- Implementations run round-robin, one call each per round, with the starting one rotating: clock drift,
  thermal throttling and a neighbour's load hit all of them alike.
- Each timed call follows an untimed call of the same implementation. Runtimes leave state behind that slows
  whatever runs next: ONNX Runtime's thread pool keeps spinning after a call and slowed the implementation
  timed after it by up to 40 % on a 2-core Xeon. The untimed call absorbs that, so each timed call starts from
  its own steady state (its caches warm, its threads awake, the previous runtime's spinning over).
- Rounds continue until every implementation has had ``min_time`` seconds and ``min_reps`` calls (or exactly
  ``reps`` calls), so fast cells get many reps and slow ones still finish.
- Everything runs under ``torch.inference_mode``; results are the median and the 20th/80th percentiles.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Mapping, Optional

import torch

MIN_REPS = 5
MAX_REPS = 10_000


@dataclass(frozen=True)
class TimingStats:
    """Spread of one implementation's latency, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int

    @classmethod
    def from_samples(cls, samples_ms: List[float]) -> "TimingStats":
        if not samples_ms:
            raise ValueError("no timing samples: at least one timed call is needed")
        if len(samples_ms) == 1:
            only = float(samples_ms[0])
            return cls(only, only, only, 1)
        # Inclusive deciles interpolate between samples, so p20 <= median <= p80 always holds.
        deciles = statistics.quantiles(samples_ms, n=10, method="inclusive")
        return cls(float(statistics.median(samples_ms)), float(deciles[1]), float(deciles[7]), len(samples_ms))

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


class _CallTimer:
    """Times one call in milliseconds on ``device``: wall clock on CPU, synchronised CUDA events on GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            self.start.record()
            fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end)
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


def time_round_robin(fns: Mapping[str, Callable[[], object]], device: torch.device | str = "cpu", *,
                     warmup: int = 3, reps: Optional[int] = None, min_time: float = 1.0,
                     min_reps: int = MIN_REPS, max_reps: int = MAX_REPS, rewarm: bool = True,
                     on_round: Optional[Callable[[], None]] = None) -> Dict[str, TimingStats]:
    """Latency of each zero-argument callable in ``fns``, measured interleaved.

    Args:
        fns: name -> callable running one forward (inputs already prepared).
        device: where the callables run (``cuda`` switches to synchronised CUDA-event timing).
        warmup: untimed calls of each callable before timing.
        reps: exact number of timed calls per callable; None to run until ``min_time``.
        min_time: seconds of timed calls each callable gets at least (when ``reps`` is None).
        min_reps / max_reps: bounds on the number of timed calls when ``reps`` is None.
        rewarm: run each callable once untimed right before each of its timed calls.
        on_round: called after every round (e.g. to advance a progress bar).
    Returns:
        name -> TimingStats.
    """
    if not fns:
        raise ValueError("time_round_robin needs at least one callable to time")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if reps is not None and reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if min_time < 0:
        raise ValueError(f"min_time must be >= 0 seconds, got {min_time}")
    timer = _CallTimer(torch.device(device))
    names = list(fns)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                fns[name]()
        rounds = 0
        while not _done(samples, rounds, reps, min_time, min_reps, max_reps):
            start = rounds % len(names)  # rotate who goes first: no implementation always follows another
            for name in names[start:] + names[:start]:
                if rewarm:
                    fns[name]()
                samples[name].append(timer(fns[name]))
            rounds += 1
            if on_round is not None:
                on_round()
    return {name: TimingStats.from_samples(s) for name, s in samples.items()}


def _done(samples: Dict[str, List[float]], rounds: int, reps: Optional[int], min_time: float, min_reps: int,
          max_reps: int) -> bool:
    if reps is not None:
        return rounds >= reps
    if rounds >= max_reps:
        return True
    spent_s = min(sum(s) for s in samples.values()) / 1e3
    return rounds >= min_reps and spent_s >= min_time
