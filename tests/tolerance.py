"""What the op tests share: the tolerance rule (DESIGN.md, Numerics), the device each backend runs on, and
compiling a Triton kernel for real GPU targets on a machine without one.

Tolerance rule: the truth is the reference computed in float64. A result in dtype d may be off from it by at most
twice the error of the same reference computed by PyTorch in d, plus a floor relative to the reference's scale
(fp32 1e-5, fp16 1e-3, bf16 1e-2). In fp32 that is "to rounding"; in fp16/bf16 it is "no worse than eager".
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional

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


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return (torch.linalg.vector_norm((y.double() - ref.double())) / torch.linalg.vector_norm(ref.double())).item()


def _as_list(out: Any) -> List[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def assert_model_matches(model: torch.nn.Module, fast: Callable[[torch.Tensor], Any], x: torch.Tensor,
                         dtype: torch.dtype = torch.float32,
                         decision: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> List[torch.Tensor]:
    """The tolerance rule for a whole model (DESIGN.md): against a float64 truth, the converted model's relative
    error is at most twice eager PyTorch's own error in the same dtype, plus the floor; in fp32 the decision the
    output stands for is identical to eager's: ``decision(y)`` (top-1 class of logits by default; the heatmap
    argmax per joint for pose, the class per pixel for segmentation). (Eager PyTorch's fp32 error on calibrated
    random models is 0.6-2.5e-5: a channels_last eager run differs from the NCHW one by as much, so "equal to
    rounding" is measured against the truth.)"""
    with torch.no_grad():
        truth = _as_list(copy.deepcopy(model).double()(x.double()))
        eager = _as_list(copy.deepcopy(model).to(dtype)(x.to(dtype)))
    ys = _as_list(fast(x.to(dtype)))
    assert len(ys) == len(truth)
    for y, t, e in zip(ys, truth, eager):
        assert y.shape == t.shape and y.dtype == dtype
        assert rel_err(y, t) <= 2 * rel_err(e, t) + FLOOR[dtype], (rel_err(y, t), rel_err(e, t))
        if dtype == torch.float32 and (decision is not None or y.dim() == 2):
            decide = decision or (lambda logits: logits.argmax(1))
            assert torch.equal(decide(y), decide(e))
    return ys


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


# Runs in a fresh interpreter without TRITON_INTERPRET, so the kernels are real JIT functions; compiles each variant
# down to a cubin (triton ships ptxas) for each target. Pointer arguments end in "_ptr", fp32 scalars start with
# "scale_"; other runtime arguments are i32 (int64 arguments only appear for tensors beyond 2**31 elements).
_COMPILE_SCRIPT = """
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
spec = json.loads(sys.argv[1])
module = importlib.import_module(spec["module"])
jit_fn, configs = getattr(module, spec["kernel"]), module.candidates(False)  # the kernel and its tuning configs
for v in spec["variants"]:
    tiles = configs if v["all_configs"] else configs[:1]
    for config in tiles:
        constexprs = {**v["constexprs"], **config.kwargs}
        signature = {p.name: "constexpr" if p.is_constexpr else ("*" + v["dtype"] if p.name.endswith("_ptr")
                     else "fp32" if p.name.startswith("scale_") else "i32") for p in jit_fn.params}
        for arch in v["archs"]:
            triton.compile(ASTSource(jit_fn, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": config.num_warps, "num_stages": config.num_stages})
"""


def compile_for_gpu(module: str, kernel: str, variants: List[Dict[str, Any]]) -> None:
    """Compiles ``module.kernel`` (a Triton kernel whose module lists its tuning configs, ``candidates(False)``)
    for each variant: a dict with "dtype" (a Triton type name: fp32, fp16, bf16), "constexprs" (all but the tuned
    ones), "archs" (compute capabilities) and "all_configs" (every tuning config, or only the first)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    spec = json.dumps({"module": module, "kernel": kernel, "variants": variants})
    result = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, spec], env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"compiling {module}.{kernel} for GPU targets failed:\n{result.stderr[-4000:]}"


def fail_if_a_backend_runs(monkeypatch) -> None:
    """Makes reaching any backend's kernel an assertion error: for tests that expect validation to fail first."""
    from hrnet_fast.ops import backends

    def no_kernel(op, backend):
        raise AssertionError(f"a {backend} kernel for {op} was reached before the inputs were validated")
    monkeypatch.setattr(backends, "implementation", no_kernel)


def zeros(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)
