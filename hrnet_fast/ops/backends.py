"""Which backends are live, and picking one per call.

Four implementations share one contract (see ``reference.py`` for the definition of correct):
  torch   the reference composition, always live
  triton  ``hrnet_fast_kernels`` (GPU; CPU tensors only under ``TRITON_INTERPRET=1``)
  cuda    the compiled extension's CUDA kernels (``csrc/cuda``)
  cpu     the compiled extension's CPU kernels and oneDNN's fused convolution (``csrc/cpu``, ``cpu_conv.py``)

Nothing here imports triton or loads the extension at ``import hrnet_fast``; both happen on first use.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

BACKENDS = ("torch", "triton", "cuda", "cpu")
OPS = ("conv_bn_act", "multires_fuse")
SEGMENT_OPS = ("seg_normalize", "resize_argmax")  # hrnet_fast/segment/ops.py (ops/seg_library.py)

# Preferred order per device type, best first. ``triton`` on CPU exists only for testing (interpreter).
PREFERENCE = {
    "cuda": ("cuda", "triton", "torch"),
    "cpu": ("cpu", "torch"),
}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_importable() -> Tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "the triton package is not installed"
    try:
        import triton  # noqa: F401
    except Exception as e:  # a broken install must not break hrnet_fast
        return False, f"triton failed to import: {e}"
    return True, ""


def availability(backend: str, op: str, device_type: str) -> Tuple[bool, str]:
    """(live, reason) for running ``op`` with ``backend`` on tensors of ``device_type``."""
    if backend == "torch":
        return True, "reference composition"
    if backend == "triton":
        ok, why = _triton_importable()
        if not ok:
            return False, why
        if device_type == "cuda":
            return (True, "") if torch.cuda.is_available() else (False, "no CUDA device")
        if device_type == "cpu" and _interpreting():
            return True, "TRITON_INTERPRET=1 (interpreter, for testing)"
        return False, f"triton runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), not {device_type}"
    from . import extension
    if backend == "cuda":
        if device_type != "cuda":
            return False, f"the cuda backend runs on CUDA tensors, not {device_type}"
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        return extension.has_kernel(op, "CUDA")
    if backend == "cpu":
        if device_type != "cpu":
            return False, f"the cpu backend runs on CPU tensors, not {device_type}"
        if op == "conv_bn_act":
            from . import cpu_conv
            return cpu_conv.availability()
        return extension.has_kernel(op, "CPU")
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} (or None for the best)")


@functools.lru_cache(maxsize=None)
def implementation(op: str, backend: str) -> Callable:
    """The function that runs ``op`` on ``backend``; signatures follow ``reference.py`` (validated inputs)."""
    if op in SEGMENT_OPS:
        from . import seg_library
        return seg_library.implementation(op, backend)
    if backend == "torch":
        from . import reference
        return {"conv_bn_act": reference.conv_bn_act_ref, "multires_fuse": reference.multires_fuse_ref}[op]
    if backend == "triton":
        mod = importlib.import_module(f"hrnet_fast_kernels.{op}")
        return getattr(mod, op)
    if backend == "cpu" and op == "conv_bn_act":
        from . import cpu_conv
        return cpu_conv.conv_bn_act
    if backend == "cuda" and op == "conv_bn_act":
        from . import cuda_conv
        return cuda_conv.conv_bn_act
    from . import extension
    return extension.native(op)


_warned: set = set()


def _warn_once(key: Tuple, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def select(op: str, device: torch.device, backend: Optional[str]) -> str:
    """The backend to run ``op`` on ``device``: the one asked for (an error if it cannot run), or the best
    live one, warning once when a faster one is not live and saying why."""
    dtype = device.type
    if backend is not None:
        ok, why = availability(backend, op, dtype)
        if not ok:
            raise RuntimeError(f"backend {backend!r} cannot run {op} on {device}: {why}")
        return backend
    order = PREFERENCE.get(dtype, ("torch",))
    for i, name in enumerate(order):
        ok, why = availability(name, op, dtype)
        if ok:
            if i > 0:
                skipped = "; ".join(f"{n}: {availability(n, op, dtype)[1]}" for n in order[:i])
                _warn_once((op, dtype, name), f"hrnet_fast: {op} on {dtype} falls back to the slower '{name}' "
                                              f"backend ({skipped})")
            return name
    return "torch"


_resolved: Dict[Tuple[str, str, Optional[str]], str] = {}


@torch.compiler.assume_constant_result
def resolve(op: str, device_type: str, backend: Optional[str]) -> str:
    """``select`` for a device type, cached, and a constant under torch.compile: availability checks import
    modules and query the dispatcher, which the compiler cannot trace, and their answer does not change within
    a process. Per-call paths (the public ops, converted models) use this."""
    key = (op, device_type, backend)
    name = _resolved.get(key)
    if name is None:
        name = _resolved[key] = select(op, torch.device(device_type), backend)
    return name


def backend_info() -> Dict[str, Dict[str, object]]:
    """For each backend: whether it is live on this machine, for which ops and devices, and why not."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    info: Dict[str, Dict[str, object]] = {}
    for name in BACKENDS:
        per_op = {}
        for op in OPS:
            per_dev = {d: availability(name, op, d) for d in devices}
            per_op[op] = {d: {"live": ok, "reason": why} for d, (ok, why) in per_dev.items()}
        live = any(v["live"] for ops in per_op.values() for v in ops.values())
        reasons = sorted({v["reason"] for ops in per_op.values() for v in ops.values() if not v["live"]})
        info[name] = {"live": live, "reason": "; ".join(reasons) if not live else "", "ops": per_op}
    return info
