"""Taking another CPU's conv_bn_act path on this one.

Which path ``cpu_conv`` takes for float16/bfloat16 depends on one question, ``cpu_conv.native_compute(dtype)``
(does oneDNN compute this dtype natively here?). ``take_path(monkeypatch, "native")`` answers yes for both, as an
AVX512-FP16 + AMX Xeon does; ``"widened"`` answers no, as an AVX2 CPU does; ``"machine"`` leaves this machine's
answer. The Python decisions, casts, packing and fallbacks then run exactly as on that CPU.

What cannot run here is oneDNN's own kernel for a dtype this CPU lacks (oneDNN refuses float16 without
AVX512-FP16 or AVX-NE-CONVERT). For those calls only, ``EmulatedOneDNN`` stands in for ``torch.ops.mkldnn``'s four
entry points with oneDNN's documented semantics: the convolution accumulated in float32 or better (float64
here), bias, sum (residual) and ReLU applied to the accumulator, one rounding to the output dtype, channels_last
output, and a packed weight that unpacks to the same values. Calls in a dtype the CPU does run go to the real
oneDNN, so on a Xeon nothing is emulated. oneDNN's own reduced-precision post-op contract is checked for real
wherever the CPU has it (bfloat16 on any AVX512 CPU, float16 on AVX512-FP16).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from hrnet_fast.ops import cpu_conv

PATHS = ("machine", "native", "widened")
REDUCED = (torch.float16, torch.bfloat16)
machine_native = cpu_conv.native_compute  # this process's real answer, before any test replaces it


class _EmulatedConv:
    """``torch.ops.mkldnn._convolution_pointwise`` (and ``.binary``) for a dtype this CPU's oneDNN refuses."""

    def __init__(self, calls: List[str]):
        self.calls = calls

    def __call__(self, x, weight, bias, padding, stride, dilation, groups, attr, scalars, algorithm):
        if machine_native(x.dtype):
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, stride, dilation, groups, attr,
                                                           scalars, algorithm)
        assert attr in ("none", "relu") and list(dilation) == [1, 1] and groups == 1 and not scalars
        return self._emulate(x, weight, bias, padding, stride, None, attr == "relu")

    def binary(self, x, other, weight, bias, padding, stride, dilation, groups, binary_attr, alpha, unary_attr,
               unary_scalars, unary_algorithm):
        if machine_native(x.dtype):
            return torch.ops.mkldnn._convolution_pointwise.binary(x, other, weight, bias, padding, stride, dilation,
                                                                  groups, binary_attr, alpha, unary_attr,
                                                                  unary_scalars, unary_algorithm)
        assert binary_attr == "add" and alpha is None and unary_attr in (None, "relu")
        return self._emulate(x, weight, bias, padding, stride, other, unary_attr == "relu")

    def _emulate(self, x, weight, bias, padding, stride, residual: Optional[torch.Tensor], relu: bool):
        assert weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype), "oneDNN takes one dtype"
        self.calls.append(f"conv {x.dtype}{' + sum' if residual is not None else ''}")
        w = weight.to_dense() if weight.is_mkldnn else weight
        y = F.conv2d(x.double(), w.double(), None if bias is None else bias.double(), list(stride), list(padding))
        if residual is not None:
            y = y + residual.double()
        if relu:
            y = y.relu()
        return y.to(x.dtype).contiguous(memory_format=torch.channels_last)


class _EmulatedConvInPlace(_EmulatedConv):
    """``torch.ops.mkldnn._convolution_pointwise_.binary``: the ``.binary`` result written over ``other``."""

    def binary(self, other, x, *args):
        if machine_native(x.dtype):
            return torch.ops.mkldnn._convolution_pointwise_.binary(other, x, *args)
        return other.copy_(super().binary(x, other, *args))


class EmulatedOneDNN:
    """Stands in for ``cpu_conv.ONEDNN`` (``torch.ops.mkldnn``); records what it emulated in ``calls``."""

    def __init__(self):
        self.calls: List[str] = []
        self._convolution_pointwise = _EmulatedConv(self.calls)
        self._convolution_pointwise_ = _EmulatedConvInPlace(self.calls)

    def _reorder_convolution_weight(self, weight, padding, stride, dilation, groups, x_shape):
        if machine_native(weight.dtype):
            return torch.ops.mkldnn._reorder_convolution_weight(weight, padding, stride, dilation, groups, x_shape)
        self.calls.append(f"pack {weight.dtype}")
        return weight.to_mkldnn()  # an opaque oneDNN tensor, plain layout: unpacks to the same values


def take_path(monkeypatch, path: str) -> Optional[EmulatedOneDNN]:
    """Makes ``cpu_conv`` decide as a CPU with native float16 and bfloat16 ("native"), with neither ("widened"),
    or as this machine ("machine"). Returns the oneDNN stand-in for "native" (None otherwise)."""
    assert path in PATHS, path
    if path == "machine":
        return None
    native = path == "native"
    monkeypatch.setattr(cpu_conv, "native_compute", lambda dtype: dtype == torch.float32 or native)
    if not native:
        return None
    stand_in = EmulatedOneDNN()
    monkeypatch.setattr(cpu_conv, "ONEDNN", stand_in)
    return stand_in
