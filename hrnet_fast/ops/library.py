"""The two fused ops as ``torch.library`` custom ops (``torch.ops.hrnet_fast.*``) with fake implementations,
so graphs that call them work under ``torch.compile``, CUDA graphs and ``torch.export``.

Inputs arrive validated (``checks.py``) and with a backend already chosen (``backends.resolve``); the op body
only forwards to that backend's implementation (``run_conv_bn_act`` / ``run_multires_fuse``).
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, List, Optional

import torch

from . import backends
from .checks import conv_out_shape, output_memory_format


def check_no_grad(op: str, *tensors: Optional[torch.Tensor]) -> None:
    """The ops have no backward: refuse, by name, a call whose output autograd would have to differentiate
    (grad mode on and an input requiring grad) instead of giving it a gradient that is silently wrong."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(f"hrnet_fast.ops.{op} is inference-only and has no backward, but an input requires "
                           f"grad: call it under torch.no_grad() or torch.inference_mode(), or detach the inputs")


def on_device(backend: str, x: torch.Tensor) -> ContextManager:
    """Makes x's device current for a Triton launch, which goes to the current device and its current stream
    (an illegal access for tensors on another GPU). The compiled CUDA kernels guard themselves (c10 CUDAGuard)
    and ATen ops follow their tensors, so the other backends need nothing."""
    if backend == "triton" and x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def run_conv_bn_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    residual: Optional[torch.Tensor], stride: int, padding: int, relu: bool,
                    backend: str) -> torch.Tensor:
    check_no_grad("conv_bn_act", x, weight, bias, residual)
    impl = backends.implementation("conv_bn_act", backend)
    with on_device(backend, x):
        out = impl(x, weight, bias, stride=stride, padding=padding, residual=residual, relu=relu)
    return out.contiguous(memory_format=output_memory_format(x))


def run_multires_fuse(x: torch.Tensor, low_res: List[torch.Tensor], same_res: List[torch.Tensor], relu: bool,
                      mode: str, align_corners: bool, backend: str) -> torch.Tensor:
    check_no_grad("multires_fuse", x, *low_res, *same_res)
    impl = backends.implementation("multires_fuse", backend)
    with on_device(backend, x):
        out = impl(x, list(low_res), list(same_res), relu=relu, mode=mode, align_corners=align_corners)
    return out.contiguous(memory_format=output_memory_format(x))


# Defined with the low-level Library API rather than torch.library.custom_op: a call costs ~2 us instead of
# ~7-11 us, and converted models make ~350 of them per forward. One kernel serves every device
# (CompositeExplicitAutograd); the backend argument picks the implementation. The ops are inference-only: they
# have no autograd formula, and refuse inputs that require grad while grad mode is on (check_no_grad).
_lib = torch.library.Library("hrnet_fast", "DEF")
_lib.define("conv_bn_act(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, int stride, int padding, "
            "bool relu, str backend) -> Tensor")
_lib.define("multires_fuse(Tensor x, Tensor[] low_res, Tensor[] same_res, bool relu, str mode, bool align_corners, "
            "str backend) -> Tensor")
_lib.impl("conv_bn_act", run_conv_bn_act, "CompositeExplicitAutograd")
_lib.impl("multires_fuse", run_multires_fuse, "CompositeExplicitAutograd")


@torch.library.register_fake("hrnet_fast::conv_bn_act", lib=_lib)
def _(x, weight, bias, residual, stride, padding, relu, backend):
    shape = conv_out_shape(x.shape, weight.shape, stride, padding)
    return x.new_empty(shape).contiguous(memory_format=output_memory_format(x))


@torch.library.register_fake("hrnet_fast::multires_fuse", lib=_lib)
def _(x, low_res, same_res, relu, mode, align_corners, backend):
    return torch.empty_like(x, memory_format=output_memory_format(x))
