"""The two fused ops as ``torch.library`` custom ops (``torch.ops.hrnet_fast.*``) with fake implementations,
so graphs that call them work under ``torch.compile``, CUDA graphs and ``torch.export``.

Inputs arrive validated (``checks.py``) and with a backend already chosen (``backends.select``); the op body
only forwards to that backend's implementation.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from . import backends
from .checks import conv_out_shape


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is laid out that way (and is not ambiguous NCHW), else contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@torch.library.custom_op("hrnet_fast::conv_bn_act", mutates_args=())
def conv_bn_act_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   residual: Optional[torch.Tensor], stride: int, padding: int, relu: bool,
                   backend: str) -> torch.Tensor:
    impl = backends.implementation("conv_bn_act", backend)
    out = impl(x, weight, bias, stride=stride, padding=padding, residual=residual, relu=relu)
    return out.contiguous(memory_format=output_memory_format(x))


@conv_bn_act_op.register_fake
def _(x, weight, bias, residual, stride, padding, relu, backend):
    shape = conv_out_shape(x.shape, weight.shape, stride, padding)
    return x.new_empty(shape).contiguous(memory_format=output_memory_format(x))


@torch.library.custom_op("hrnet_fast::multires_fuse", mutates_args=())
def multires_fuse_op(x: torch.Tensor, low_res: List[torch.Tensor], same_res: List[torch.Tensor], relu: bool,
                     backend: str) -> torch.Tensor:
    impl = backends.implementation("multires_fuse", backend)
    out = impl(x, list(low_res), list(same_res), relu=relu)
    return out.contiguous(memory_format=output_memory_format(x))


@multires_fuse_op.register_fake
def _(x, low_res, same_res, relu, backend):
    return torch.empty_like(x, memory_format=output_memory_format(x))
