"""Choosing a Triton kernel's launch config once per machine, not once per process.

A kernel offers a short list of candidate configs per shape class. The first call with a new tuning key times
each candidate on the GPU (``_bench``) and keeps the fastest: in memory for the process, and in a small JSON file
for every later process on the same device with the same Triton version. A key is what changes the best tile
(dtype, layout, channel counts, kernel size, stride, and the number of output pixels bucketed to a power of two),
so a model's distinct keys are few and a new batch size often reuses them.

Timing keeps the L2 state of a real forward. At batch 1 each layer's input was written by the layer before it
and still sits in L2 (an HRNet-W18 activation is at most a few MB; an H100's L2 is 50 MB), so a kernel in a
forward reads from L2, not DRAM. ``_bench`` therefore launches each candidate back to back on the call's own
tensors without flushing anything between launches, and times a batch of launches with CUDA events, queued
behind a short GPU sleep so the CPU's launch cost is not what is measured. (``triton.testing.do_bench`` empties
L2 before each repetition: it measures the DRAM-bound case, which favours other tiles.)

The file: ``$HRNET_FAST_TUNING_CACHE`` if set (a path; ``off`` disables the file), else
``$XDG_CACHE_HOME/hrnet_fast/triton_tuning.json`` (``~/.cache/...`` by default). Entries are keyed by device name,
Triton version, kernel and tuning key; one that names a config no longer among the candidates is tuned again.
Writes merge with what other processes wrote meanwhile and replace the file atomically; an unreadable or
unwritable file costs the persistence, never the call.

Nothing is timed under the Triton interpreter, off the GPU, or with ``HRNET_FAST_TUNING=off`` (for tools under
which timing means nothing, such as compute-sanitizer): the first candidate, each shape class's best guess, runs.
While a CUDA graph is being captured nothing can be timed either: the remembered choice (this process's, else the
file's) is returned, and a key with none raises ``NotWarmedUp``, which says to warm up before capturing.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import triton

CACHE_ENV = "HRNET_FAST_TUNING_CACHE"
SWITCH_ENV = "HRNET_FAST_TUNING"

# _bench: launches before timing (the first compiles and loads the kernel, the rest bring its operands into L2),
# then ROUNDS batches of LAUNCHES_PER_ROUND back-to-back launches, each batch timed with CUDA events. W18's
# kernels take 2-200 us, so a candidate costs well under 50 ms and a forward's ~50 keys tune in a few seconds.
WARMUP_LAUNCHES = 3
ROUNDS = 5
LAUNCHES_PER_ROUND = 10
# GPU sleep queued before each batch, in clock cycles (~2 ms): longer than the CPU takes to queue the batch's
# launches, so the GPU runs them back to back and the events time the kernels rather than the launch overhead.
QUEUE_AHEAD_CYCLES = 4_000_000

_lock = threading.Lock()
_memory: Dict[str, Dict] = {}  # full key -> stored config (this process)
_disk: Optional[Dict[str, Dict]] = None  # the file's entries, read once


class NotWarmedUp(RuntimeError):
    """A kernel met, during CUDA-graph capture, a launch it had never made outside capture: its config cannot be
    timed and its kernel cannot be loaded while a stream is capturing."""


def not_warmed_up(kernel: str, what: str) -> NotWarmedUp:
    return NotWarmedUp(
        f"hrnet_fast: the Triton kernel {kernel} met a new launch ({what}) while a CUDA graph was being captured; "
        f"tuning and loading a kernel cannot happen during capture. Warm up before capturing: run "
        f"hrnet_fast.warmup(model, shapes) or one ordinary forward with this input shape, dtype and layout")


def capturing(device: torch.device) -> bool:
    """Whether the current stream of a CUDA device is capturing a graph (False off CUDA)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def switched_off() -> bool:
    return os.environ.get(SWITCH_ENV, "").lower() == "off"


def cache_path() -> Optional[str]:
    """Where chosen configs persist, or None when persistence is off."""
    path = os.environ.get(CACHE_ENV)
    if path is not None:
        return None if path.strip().lower() in ("", "off", "0", "none") else os.path.expanduser(path)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hrnet_fast", "triton_tuning.json")


def config_record(config: triton.Config) -> Dict:
    return {"kwargs": dict(config.kwargs), "num_warps": config.num_warps, "num_stages": config.num_stages}


def _read(path: Optional[str]) -> Dict[str, Dict]:
    if path is None or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Optional[str], key: str, record: Dict) -> None:
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        merged = {**_read(path), key: record}
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(merged, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"hrnet_fast: could not save Triton tuning results to {path} ({e}); set {CACHE_ENV} to a "
                      f"writable path, or to 'off'", RuntimeWarning, stacklevel=3)


def full_key(kernel: str, key: Tuple, device: torch.device) -> str:
    """The file's key: device name, Triton version, kernel and tuning key."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{name}|triton-{triton.__version__}|{kernel}|" + ",".join(map(str, key))


def _bench(run: Callable[[triton.Config], None], config: triton.Config) -> float:
    """Median milliseconds per launch of ``run(config)``, launched back to back with L2 left as the previous
    launch left it (see the module docstring); inf where the config cannot run on this device."""
    from triton.runtime.errors import OutOfResources
    try:
        for _ in range(WARMUP_LAUNCHES):
            run(config)
        per_launch = []
        for _ in range(ROUNDS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(QUEUE_AHEAD_CYCLES)
            start.record()
            for _ in range(LAUNCHES_PER_ROUND):
                run(config)
            end.record()
            end.synchronize()
            per_launch.append(start.elapsed_time(end) / LAUNCHES_PER_ROUND)
        return statistics.median(per_launch)
    except OutOfResources:  # e.g. more shared memory than this device has: not a candidate here
        return float("inf")


def remembered(kernel: str, key: Tuple, candidates: Sequence[triton.Config],
               device: torch.device) -> Optional[triton.Config]:
    """The candidate chosen for ``key`` before, by this process or (through the file) an earlier one; None if no
    choice is remembered or the remembered one is no longer a candidate."""
    global _disk
    fkey = full_key(kernel, key, device)
    with _lock:
        record = _memory.get(fkey)
        if record is None:
            if _disk is None:
                _disk = _read(cache_path())
            record = _disk.get(fkey)
    if record is None:
        return None
    wanted = json.dumps(record, sort_keys=True)
    for config in candidates:
        if json.dumps(config_record(config), sort_keys=True) == wanted:
            with _lock:
                _memory[fkey] = record
            return config
    return None


def pick(kernel: str, key: Tuple, candidates: Sequence[triton.Config], run: Callable[[triton.Config], None],
         device: torch.device) -> triton.Config:
    """The config to launch ``kernel`` with for ``key``: remembered, or found by timing ``run(config)`` for each
    candidate (``run`` launches the kernel with that config on the call's real arguments). During CUDA-graph
    capture only a remembered choice is returned; raises NotWarmedUp when there is none."""
    if len(candidates) == 1 or device.type != "cuda" or switched_off():
        return candidates[0]
    hit = remembered(kernel, key, candidates, device)
    if hit is not None:
        return hit
    if capturing(device):
        raise not_warmed_up(kernel, "tuning key " + ",".join(map(str, key)))
    times = [(_bench(run, c), i) for i, c in enumerate(candidates)]
    best = candidates[min(times)[1]]
    record = config_record(best)
    fkey = full_key(kernel, key, device)
    with _lock:
        _memory[fkey] = record
        if _disk is not None:
            _disk[fkey] = record
        _write(cache_path(), fkey, record)
    return best


def forget() -> None:
    """Drops what this process remembers (the file stays): the next call per key reads the file again."""
    global _disk
    with _lock:
        _memory.clear()
        _disk = None
