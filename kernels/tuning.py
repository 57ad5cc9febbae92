"""Choosing a Triton kernel's launch config once per machine, not once per process.

A kernel offers a short list of candidate configs per shape class. The first call with a new tuning key times
each candidate on the GPU (``triton.testing.do_bench``, median) and keeps the fastest: in memory for the process,
and in a small JSON file for every later process on the same device with the same Triton version. A key is what
changes the best tile (dtype, layout, channel counts, kernel size, stride, and the number of output pixels bucketed
to a power of two), so a model's distinct keys are few and a new batch size often reuses them.

The file: ``$HRNET_FAST_TUNING_CACHE`` if set (a path; ``off`` disables the file), else
``$XDG_CACHE_HOME/hrnet_fast/triton_tuning.json`` (``~/.cache/...`` by default). Entries are keyed by device name,
Triton version, kernel and tuning key; one that names a config no longer among the candidates is tuned again.
Writes merge with what other processes wrote meanwhile and replace the file atomically; an unreadable or
unwritable file costs the persistence, never the call.

No timing happens while a CUDA graph is being captured (it would break the capture), under the Triton
interpreter, or with ``HRNET_FAST_TUNING=off`` (for tools under which timing means nothing, such as
compute-sanitizer): the first candidate, each shape class's best guess, runs, and nothing is remembered.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import triton

CACHE_ENV = "HRNET_FAST_TUNING_CACHE"
SWITCH_ENV = "HRNET_FAST_TUNING"

# do_bench's warm-up and timing windows in milliseconds: the W18 kernels take 2-200 us, so 25 ms of timed calls
# is hundreds of repetitions, and a forward with ~50 keys of <= 4 candidates tunes in about 5 s.
BENCH_WARMUP_MS = 5
BENCH_REP_MS = 25

_lock = threading.Lock()
_memory: Dict[str, Dict] = {}  # full key -> stored config (this process)
_disk: Optional[Dict[str, Dict]] = None  # the file's entries, read once


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
    from triton.runtime.errors import OutOfResources
    try:
        return triton.testing.do_bench(lambda: run(config), warmup=BENCH_WARMUP_MS, rep=BENCH_REP_MS,
                                       return_mode="median")
    except OutOfResources:  # e.g. more shared memory than this device has: not a candidate here
        return float("inf")


def pick(kernel: str, key: Tuple, candidates: Sequence[triton.Config], run: Callable[[triton.Config], None],
         device: torch.device) -> triton.Config:
    """The config to launch ``kernel`` with for ``key``: remembered, or found by timing ``run(config)`` for each
    candidate (``run`` launches the kernel with that config on the call's real arguments)."""
    global _disk
    if (len(candidates) == 1 or device.type != "cuda" or os.environ.get(SWITCH_ENV, "").lower() == "off"
            or torch.cuda.is_current_stream_capturing()):
        return candidates[0]
    fkey = full_key(kernel, key, device)
    with _lock:
        record = _memory.get(fkey)
        if record is None:
            if _disk is None:
                _disk = _read(cache_path())
            record = _disk.get(fkey)
    by_record = {json.dumps(config_record(c), sort_keys=True): c for c in candidates}
    if record is not None:
        hit = by_record.get(json.dumps(record, sort_keys=True))
        if hit is not None:
            _memory[fkey] = record
            return hit
    times = [(_bench(run, c), i) for i, c in enumerate(candidates)]
    best = candidates[min(times)[1]]
    record = config_record(best)
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
