"""What the op tests share: the tolerance rule (DESIGN.md, Numerics) and the device each backend runs on.

Tolerance rule: the truth is the reference computed in float64. A result in dtype d may be off from it by at most
twice the error of the same reference computed by PyTorch in d, plus a floor relative to the reference's scale
(fp32 1e-5, fp16 1e-3, bf16 1e-2). In fp32 that is "to rounding"; in fp16/bf16 it is "no worse than eager".
"""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from hrnet_fast.ops.backends import availability

FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def cast(obj: Any, dtype: torch.dtype) -> Any:
    """``obj`` with every floating tensor in it (also inside lists and tuples) cast to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(cast(o, dtype) for o in obj)
    return obj


def assert_matches_reference(actual: torch.Tensor, reference: Callable[..., torch.Tensor], *args: Any,
                             **kwargs: Any) -> None:
    """Asserts the tolerance rule for ``actual`` = the op applied to ``args``/``kwargs`` (tensors in one dtype).

    ``reference`` is the op's pure-PyTorch reference; it is evaluated in float64 (the truth) and in the inputs'
    dtype (PyTorch's own error).
    """
    dtype = actual.dtype
    truth = reference(*cast(args, torch.float64), **{k: cast(v, torch.float64) for k, v in kwargs.items()})
    eager = reference(*args, **kwargs)
    assert eager.dtype == dtype, f"inputs are {eager.dtype} but the result is {dtype}"
    assert actual.shape == truth.shape, f"shape {tuple(actual.shape)}, expected {tuple(truth.shape)}"
    scale = truth.abs().max().item() if truth.numel() else 0.0
    eager_error = (eager.double() - truth).abs().max().item() if truth.numel() else 0.0
    atol = 2 * eager_error + FLOOR[dtype] * max(scale, 1.0)
    torch.testing.assert_close(actual.double(), truth, rtol=0, atol=atol,
                               msg=lambda m: f"{m}\n(allowed: 2 x eager {dtype} error {eager_error:.3g} + floor; "
                                             f"reference scale {scale:.3g})")


def backend_device(backend: str, op: str) -> torch.device:
    """The device ``backend`` is tested on here; skips (with the dispatcher's reason) when it is not live there.

    torch and triton run on the GPU when there is one, else on the CPU (triton through the interpreter).
    """
    if backend in ("cpu", "cuda"):
        device = backend
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    live, why = availability(backend, op, device)
    if not live:
        pytest.skip(f"backend {backend!r} is not live for {op} on {device}: {why}")
    return torch.device(device)
