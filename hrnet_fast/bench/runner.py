"""Running a benchmark: the calibrated reference model, every implementation built from it per precision, and
every (model, precision, batch) cell timed with all its implementations interleaved (``hrnet_fast.timing``)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..timing import TimingStats, time_round_robin
from .compare import relative_error
from .peers import DTYPES, SPECS, Implementation, build_implementation
from .progress import Log, Progress
from .settings import Settings

CALIBRATION = {"steps": 2, "batch": 2}
COUNT_BATCH = 1


def reference_model(name: str, device: torch.device, input_size: Tuple[int, int]) -> nn.Module:
    """The reference model ``name`` with random weights (seed 0) and BatchNorm calibrated on ``device`` (fast
    where there is a GPU), returned on the CPU in eval mode."""
    from ..calibrate import calibrate_bn
    from ..registry import create_model
    torch.manual_seed(0)
    model = create_model(name).to(device)
    calibrate_bn(model, input_size, steps=CALIBRATION["steps"], batch=CALIBRATION["batch"])
    return model.cpu().eval()


@dataclass
class Results:
    """Everything one run measured."""

    settings: Settings
    timings: Dict[Tuple[str, str, int, str], TimingStats] = field(default_factory=dict)  # (model, dtype, batch, impl)
    # (model, dtype, impl) -> relative L2 difference from the FP32 reference's outputs at the first batch (for
    # dtype != fp32, "reference" is eager PyTorch at that dtype: its own rounding, shown beside the others)
    rel_error: Dict[Tuple[str, str, str], float] = field(default_factory=dict)
    counts: Dict[Tuple[str, str, str], Any] = field(default_factory=dict)  # (model, dtype, impl) -> DispatchCounts
    info: Dict[Tuple[str, str, str], Dict[str, str]] = field(default_factory=dict)  # (model, dtype, impl) -> facts
    profiles: Dict[str, Dict[str, float]] = field(default_factory=dict)  # model -> params/macs/flops
    failed: Dict[Tuple[str, str, str], str] = field(default_factory=dict)  # (model, dtype, impl) -> why a peer failed
    wall_s: float = 0.0

    def speedup(self, model: str, dtype: str, batch: int, impl: str) -> Optional[float]:
        ref = self.timings.get((model, dtype, batch, "reference"))
        other = self.timings.get((model, dtype, batch, impl))
        return None if ref is None or other is None else ref.median_ms / other.median_ms


class _PeerFailed(Exception):
    """A peer raised while running; ``impl`` says which, ``reason`` what it raised."""

    def __init__(self, impl: str, error: Exception):
        self.impl, self.reason = impl, _failure_reason(error)
        super().__init__(f"{impl}: {self.reason}")


def _failure_reason(error: Exception) -> str:
    """The exception's type and the first line of its message, e.g. ``RuntimeError: boom``."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _guarded(impl: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn``, raising _PeerFailed instead of whatever it raises, so the cell knows which peer to leave out (the
    extra Python call costs well under a microsecond per forward, below the timings' noise)."""
    def call(x: Any) -> Any:
        try:
            return fn(x)
        except Exception as e:
            raise _PeerFailed(impl, e) from e
    return call


def _build(results: Results, name: str, dtype: str, model: nn.Module, impl: str) -> Optional[Implementation]:
    """``impl`` of ``model`` at ``dtype``; None for a peer that failed to build (recorded in ``results.failed``).
    A peer is what the run compares against: one that cannot build or run on this machine is reported, and the
    others are still timed. The reference and the converted model are what the run measures: they raise."""
    s = results.settings
    def build() -> Implementation:
        return build_implementation(impl, model, s.device, dtype, input_size=s.input_size, cuda_graph=s.cuda_graph)
    if SPECS[impl].peer is None:
        return build()
    try:
        runner = build()
    except Exception as e:
        results.failed[(name, dtype, impl)] = _failure_reason(e)
        return None
    return Implementation(_guarded(impl, runner.forward), _guarded(impl, runner.prepare), runner.info)


def _build_all(results: Results, name: str, dtype: str, model: nn.Module,
               progress: Progress) -> Dict[str, Implementation]:
    """Every implementation of the cell's precision that builds, with a progress line each."""
    s = results.settings
    wanted = [impl for impl in s.implementations if s.runs(impl, dtype)]
    impls = {}
    for index, impl in enumerate(wanted, start=1):
        begin = time.perf_counter()
        runner = _build(results, name, dtype, model, impl)
        progress.built(f"{name} {dtype}", impl, index, len(wanted), time.perf_counter() - begin,
                       results.failed.get((name, dtype, impl)))
        if runner is not None:
            impls[impl] = runner
    return impls


def _fp32_truth(model: nn.Module, settings: Settings) -> Any:
    """The FP32 reference's outputs at the first batch: what every precision's outputs are compared with (eager
    BF16 has rounding of its own; comparing with it would count that against the others)."""
    reference = build_implementation("reference", model, settings.device, "fp32", input_size=settings.input_size)
    with torch.inference_mode():
        return reference.forward(reference.prepare(_input(settings.batches[0], settings, "fp32")))


def _input(batch: int, settings: Settings, dtype: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, *settings.input_size, generator=gen)
    return x.to(device=settings.device, dtype=DTYPES[dtype])


def _count(results: Results, name: str, dtype: str, model: nn.Module, impls: Dict[str, Implementation]) -> None:
    """Ops and activation bytes per steady-state forward at batch 1, reference vs converted (without CUDA graphs,
    which replay every kernel from one launch and would hide them from the counter)."""
    from ..counting import count_forward
    s = results.settings
    x = _input(COUNT_BATCH, s, dtype)
    converted = impls["converted"]
    if s.device.type == "cuda" and s.cuda_graph is not False:
        converted = build_implementation("converted", model, s.device, dtype, input_size=s.input_size,
                                         cuda_graph=False)
    for impl, runner in (("reference", impls["reference"]), ("converted", converted)):
        with torch.no_grad():
            runner.forward(runner.prepare(x))  # first-call work (CPU weight packing, autotuning) is not per forward
        results.counts[(name, dtype, impl)] = count_forward(runner.forward, runner.prepare(x))


def _profile(model: nn.Module, input_size: Tuple[int, int]) -> Dict[str, float]:
    """Params, MACs and FLOPs (the MMClassification convention, see ``hrnet_fast.profile``)."""
    from ..profile import profile
    p = profile(model, input_size)
    return {"params": float(p.params), "macs": float(p.macs), "flops": float(p.flops)}


def run(settings: Settings, log: Optional[Log] = None) -> Results:
    """Times every (model, precision, batch) cell for every implementation; ``log`` gets a line per
    implementation built and per cell timed (``hrnet_fast.bench.progress``)."""
    results = Results(settings)
    progress = Progress(settings, log)
    begin = time.perf_counter()
    for name in settings.models:
        progress.say(f"[{name}] calibrating BatchNorm")
        model = reference_model(name, settings.device, settings.input_size)
        results.profiles[name] = _profile(model, settings.input_size)
        truth = _fp32_truth(model, settings)
        for dtype in settings.dtypes:
            impls = _build_all(results, name, dtype, model, progress)
            for impl, runner in impls.items():
                if runner.info:
                    results.info[(name, dtype, impl)] = dict(runner.info)
            _count(results, name, dtype, model, impls)
            for batch in settings.batches:
                cell_begin = time.perf_counter()
                _time_cell(results, name, dtype, batch, impls, truth)
                progress.timed(f"{name} {dtype} batch {batch}", len(impls), time.perf_counter() - cell_begin)
            del impls
            if settings.device.type == "cuda":
                torch.cuda.empty_cache()
    results.wall_s = time.perf_counter() - begin
    return results


def _time_cell(results: Results, name: str, dtype: str, batch: int, impls: Dict[str, Implementation],
               truth: Any) -> None:
    """Times one cell (at the first batch, its outputs are compared with ``truth``, the FP32 reference's). A peer
    that raises is recorded as failed and removed from ``impls`` (so from the later cells too), and the cell is
    timed again without it: its figures come from one interleaved run."""
    while True:
        try:
            return _time_cell_once(results, name, dtype, batch, impls, truth)
        except _PeerFailed as e:
            results.failed[(name, dtype, e.impl)] = e.reason
            del impls[e.impl]


def _time_cell_once(results: Results, name: str, dtype: str, batch: int, impls: Dict[str, Implementation],
                    truth: Any) -> None:
    settings = results.settings
    x = _input(batch, settings, dtype)
    inputs = {impl: runner.prepare(x) for impl, runner in impls.items()}
    if batch == settings.batches[0]:
        with torch.inference_mode():
            outs = {impl: runner.forward(inputs[impl]) for impl, runner in impls.items()}
        for impl, out in outs.items():
            if impl != "reference" or dtype != "fp32":  # the FP32 reference is the truth itself
                results.rel_error[(name, dtype, impl)] = relative_error(out, truth)
    fns = {impl: (lambda r=runner, i=inputs[impl]: r.forward(i)) for impl, runner in impls.items()}
    stats = time_round_robin(fns, settings.device, warmup=settings.warmup, reps=settings.reps,
                             min_time=settings.min_time)
    for impl, s in stats.items():
        results.timings[(name, dtype, batch, impl)] = s
