"""conv_bn_act on CPU: oneDNN's fused post-op convolution where it wins, ATen's convolution plus an in-place
epilogue where it does not.

    y = cpu_conv.conv_bn_act(x, w, b, stride=1, padding=1, residual=r, relu=True)
    packed = cpu_conv.prepack(w, b, stride=1, padding=1, x_shape=(1, 18, 56, 56))   # once, at convert time
    y = cpu_conv.conv_bn_act_packed(x, packed, residual=r, relu=True)                 # per call

Which path runs (chosen from HRNet-W18 conv shapes at batch 1, one thread, on an AVX512 CPU):

* 3x3 kernels on channels_last input: oneDNN's convolution with bias, residual add and ReLU as post-ops
  (``torch.ops.mkldnn._convolution_pointwise`` and its ``.binary`` variant), one primitive. With the weight
  pre-packed into oneDNN's blocked layout (``prepack``) it is 1.2-1.6x faster than ATen's convolution
  followed by the epilogue; unpacked, oneDNN reorders the weight on every call and the two are even.
* 1x1 kernels, and NCHW input: ``F.conv2d`` (ATen picks its own GEMM or oneDNN kernel) and then ``+ residual``
  and ReLU in place on its output. For the small 1x1 convolutions of HRNet's fusion layers (7x7 to 28x28 maps)
  oneDNN's per-call overhead makes its fused op 2-4x slower than this; on NCHW input, oneDNN fuses a residual
  only after converting to channels_last (and its NCHW fallback rejects bfloat16 with a residual).

Both paths are at least as fast as eager conv + BatchNorm + ReLU: they run the same convolution with BN folded
and fewer passes over the output.

float16: oneDNN's float16 convolution needs AVX512-FP16 or AVX-NE-CONVERT. Without them (``availability``
says so) float16 inputs are widened to float32, computed as float32 and rounded once to float16: about 10x
faster than ATen's float16 CPU convolution and at least as accurate. bfloat16 runs natively (oneDNN uses
AVX512-BF16 where present); both accumulate in float32.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=None)
def _onednn_ops() -> bool:
    """Whether this torch ships oneDNN and its fused post-op convolution ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


@functools.lru_cache(maxsize=None)
def _onednn_float16() -> bool:
    return _onednn_ops() and bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def availability() -> Tuple[bool, str]:
    """(live, note): always live on CPU; the note says which paths this machine takes."""
    if not _onednn_ops():
        return True, ("torch has no oneDNN fused convolution here: ATen convolution + in-place epilogue for every "
                      "shape")
    note = "oneDNN fused post-op convolution for 3x3 channels_last, ATen convolution + in-place epilogue otherwise"
    if not _onednn_float16():
        note += "; float16 is computed in float32 (oneDNN float16 needs AVX512-FP16 or AVX-NE-CONVERT, absent here)"
    return True, note


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.float16 and not _onednn_float16() else dtype


def _is_channels_last(x: torch.Tensor) -> bool:
    """channels_last and not also plain contiguous (the library's output-format rule)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


@dataclass(frozen=True)
class PackedConv:
    """A folded conv prepared for ``conv_bn_act_packed``.

    weight/bias are dense, in the compute dtype (float32 for float16 models where oneDNN has no float16);
    ``onednn_weight`` is the same weight in oneDNN's blocked layout (an opaque MKLDNN tensor) for 3x3 kernels,
    used on channels_last input; NCHW input uses the dense weight. It is not a parameter or buffer: keep it as
    a plain attribute, and rebuild it after moving or casting the module.
    """
    weight: torch.Tensor                  # [Cout, Cin, k, k]
    bias: Optional[torch.Tensor]          # [Cout] or None
    onednn_weight: Optional[torch.Tensor]
    stride: int
    padding: int
    dtype: torch.dtype                    # the dtype of the inputs and output


def _uses_onednn(channels_last: bool, kernel_size: int) -> bool:
    return kernel_size == 3 and channels_last and _onednn_ops() and torch._C._get_mkldnn_enabled()


def prepack(weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, padding: int,
            x_shape: Sequence[int]) -> PackedConv:
    """Prepares a folded conv for repeated ``conv_bn_act_packed`` calls on inputs shaped like ``x_shape``
    ([N, Cin, H, W]; other batch sizes and spatial sizes still work, with oneDNN's layout chosen for this one).

    Packs 3x3 weights into oneDNN's blocked layout once instead of on every call.
    """
    if weight.dim() != 4 or len(x_shape) != 4:
        raise ValueError(f"prepack expects a 4-D weight and a 4-D x_shape, got {tuple(weight.shape)} and "
                         f"{tuple(x_shape)}")
    compute = _compute_dtype(weight.dtype)
    w = weight.detach().to(compute).contiguous()
    b = bias.detach().to(compute).contiguous() if bias is not None else None
    onednn_weight = None
    if weight.shape[-1] == 3 and _onednn_ops():
        onednn_weight = torch.ops.mkldnn._reorder_convolution_weight(w, [padding, padding], [stride, stride], [1, 1],
                                                                    1, list(x_shape))
    return PackedConv(w, b, onednn_weight, int(stride), int(padding), weight.dtype)


def conv_bn_act_packed(x: torch.Tensor, packed: PackedConv, *, residual: Optional[torch.Tensor] = None,
                       relu: bool = True) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias) + residual)`` with a ``prepack``-ed conv; x in ``packed.dtype`` on CPU."""
    if x.dtype != packed.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the conv was packed for {packed.dtype}")
    channels_last = _is_channels_last(x)
    onednn = packed.onednn_weight is not None and _uses_onednn(channels_last, packed.weight.shape[-1])
    weight = packed.onednn_weight if onednn else packed.weight
    return _run(x, weight, packed.bias, packed.stride, packed.padding, residual, relu, channels_last, onednn)


def conv_bn_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, stride: int, padding: int,
                residual: Optional[torch.Tensor] = None, relu: bool = True) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias, stride, padding) + residual)`` on CPU tensors (validated by checks.py).

    Output in x's dtype and memory format (channels_last when x is, else contiguous).
    """
    compute = _compute_dtype(x.dtype)
    channels_last = _is_channels_last(x)
    bias = bias.to(compute).contiguous() if bias is not None else None  # oneDNN reads the bias as dense memory
    return _run(x, weight.to(compute), bias, stride, padding, residual, relu, channels_last,
                _uses_onednn(channels_last, weight.shape[-1]))


def _run(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, padding: int,
         residual: Optional[torch.Tensor], relu: bool, channels_last: bool, onednn: bool) -> torch.Tensor:
    """Both entry points: weight (dense, or oneDNN-packed when ``onednn``) and dense bias in the compute dtype."""
    out_dtype = x.dtype
    if weight.dtype != out_dtype:
        x = x.to(weight.dtype)
        residual = residual.to(weight.dtype) if residual is not None else None
    if onednn:
        y = _onednn_fused(x, weight, bias, stride, padding, residual, relu)
    else:
        y = F.conv2d(x, weight, bias, stride, padding)
        if residual is not None:
            y.add_(residual)
        if relu:
            y.relu_()
    if y.dtype != out_dtype:
        y = y.to(out_dtype)
    return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _onednn_fused(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, padding: int,
                  residual: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
    """One oneDNN convolution primitive with bias, sum (residual) and ReLU post-ops; x channels_last."""
    pad, strides, dilation = [padding, padding], [stride, stride], [1, 1]
    # The sum post-op needs the residual unambiguously channels_last: oneDNN cannot create its memory for one
    # output channel or a 1x1 output map (whose strides read as NCHW too). Those add separately.
    if residual is not None and residual.shape[1] > 1 and residual.shape[2] * residual.shape[3] > 1:
        residual = residual.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, weight, bias, pad, strides, dilation, 1,
                                                              "add", None, "relu" if relu else None, [], None)
    activation = "relu" if relu and residual is None else "none"
    y = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, pad, strides, dilation, 1, activation, [], None)
    if residual is not None:
        y.add_(residual)
        if relu:
            y.relu_()
    return y
