"""conv_bn_act on CPU: oneDNN's fused post-op convolution where it wins, ATen's convolution plus an in-place
epilogue where it does not.

    y = cpu_conv.conv_bn_act(x, w, b, stride=1, padding=1, residual=r, relu=True)
    w3 = cpu_conv.pack_weight(w, stride=1, padding=1, x_shape=(1, 18, 56, 56))   # once, at convert time
    y = cpu_conv.conv_bn_act(x, w3, b, stride=1, padding=1, residual=r, relu=True)

Which path runs (chosen from HRNet-W18 conv shapes at batch 1, one thread, on an AVX512 CPU):

* 3x3 kernels on channels_last input: oneDNN's convolution with bias, residual add and ReLU as post-ops
  (``torch.ops.mkldnn._convolution_pointwise`` and its ``.binary`` variant), one primitive. With the weight
  pre-packed into oneDNN's blocked layout (``pack_weight``) it is 1.2-1.6x faster than ATen's convolution
  followed by the epilogue; unpacked, oneDNN reorders the weight on every call and the two are even.
* wide 1x1 kernels (Cin*Cout >= 64*256) on channels_last input, when packed with ``pack_weight``: the same.
* other 1x1 kernels, and NCHW input: ``F.conv2d`` (ATen picks its own GEMM or oneDNN kernel) and then ``+ residual``
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
import weakref
from typing import Dict, Optional, Sequence, Tuple

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


def _uses_onednn(channels_last: bool, kernel_size: int) -> bool:
    return kernel_size == 3 and channels_last and _onednn_ops() and torch._C._get_mkldnn_enabled()


# 1x1 convs go through oneDNN only when packed and wide: per call, oneDNN costs ~30-40 us more than ATen's
# GEMM, which only pays off from about Cin*Cout = 64*256 (measured, one thread: 64->256 at 56x56 1062 -> 957 us,
# 1024->2048 at 7x7 2553 -> 1868 us; 144->18 at 7x7 12 -> 32 us).
ONEDNN_1X1_MIN_CIN_COUT = 64 * 256


def _packable(weight: torch.Tensor) -> bool:
    """Whether oneDNN should run this weight packed: any 3x3, and 1x1 from Cin*Cout = ONEDNN_1X1_MIN_CIN_COUT."""
    cout, cin, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    return _onednn_ops() and (k != 1 or cout * cin >= ONEDNN_1X1_MIN_CIN_COUT)


def pack_weight(weight: torch.Tensor, stride: int, padding: int, x_shape: Sequence[int]) -> Optional[torch.Tensor]:
    """The folded ``weight`` [Cout, Cin, k, k] in oneDNN's blocked layout for inputs shaped like ``x_shape``
    (other batch and map sizes still work), or None where oneDNN should not run it (narrow 1x1, no oneDNN).

    Pass the result as ``weight`` to ``conv_bn_act`` (or ``torch.ops.hrnet_fast.conv_bn_act`` with backend
    "cpu"): a packed weight runs through oneDNN on channels_last input, without the per-call reorder (1.2-1.6x
    on HRNet's 3x3 convs). It is an opaque MKLDNN tensor: keep it as a plain attribute (it neither pickles nor
    deep-copies) and rebuild it after moving or casting.
    """
    if weight.dim() != 4 or len(x_shape) != 4:
        raise ValueError(f"pack_weight expects a 4-D weight and a 4-D x_shape, got {tuple(weight.shape)} and "
                         f"{tuple(x_shape)}")
    if not _packable(weight):
        return None
    w = weight.detach().to(_compute_dtype(weight.dtype)).contiguous()
    return torch.ops.mkldnn._reorder_convolution_weight(w, [padding, padding], [stride, stride], [1, 1], 1,
                                                        list(x_shape))


def prepare_weight(weight: torch.Tensor, *, stride: int, padding: int, channels_last: bool,
                   x_shape: Sequence[int]) -> Optional[torch.Tensor]:
    """The cpu backend's form of a converted model's weight (``hrnet_fast.ops.weights``): packed for oneDNN
    where it runs the conv (channels_last activations, ``pack_weight``), else None (the dense weight as is)."""
    return pack_weight(weight, stride, padding, x_shape) if channels_last else None


# Packed copies of dense weights seen by ``conv_bn_act``: id(weight) -> (weakref, (version, stride, padding,
# x_shape[1:]), packed). An entry lives as long as its weight and is rebuilt when the weight changes in place.
_packed_cache: Dict[int, Tuple[weakref.ref, Tuple, Optional[torch.Tensor]]] = {}


def _packed_for(weight: torch.Tensor, stride: int, padding: int, x_shape: Sequence[int]) -> Optional[torch.Tensor]:
    """``pack_weight(weight, ...)``, packed once per weight tensor (and again after an in-place change)."""
    key = (weight._version, stride, padding, tuple(x_shape[1:]))
    entry = _packed_cache.get(id(weight))
    if entry is not None and entry[0]() is weight and entry[1] == key:
        return entry[2]
    packed = pack_weight(weight, stride, padding, x_shape)
    ref = weakref.ref(weight, lambda _, k=id(weight): _packed_cache.pop(k, None))
    _packed_cache[id(weight)] = (ref, key, packed)
    return packed


def conv_bn_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, stride: int, padding: int,
                residual: Optional[torch.Tensor] = None, relu: bool = True) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias, stride, padding) + residual)`` on CPU tensors (validated by checks.py).

    ``weight`` is dense [Cout, Cin, k, k] or a ``pack_weight`` result. A dense weight in the compute dtype that
    oneDNN would run is packed on first use and the packed copy reused while the tensor lives unchanged, so
    repeated calls with the same weight do not pay oneDNN's per-call reorder. Output in x's dtype and memory
    format (channels_last when x is, else contiguous).
    """
    # Per-call Python cost matters here (a 1x1 fusion conv takes ~10 us): conversions only where needed.
    compute = _compute_dtype(x.dtype)
    channels_last = _is_channels_last(x)
    if weight.is_mkldnn:
        if weight.dtype != compute:
            raise TypeError(f"the weight was packed for {weight.dtype} but x ({x.dtype}) computes in {compute}")
        onednn = channels_last
        if not onednn:
            weight = weight.to_dense()  # a packed weight met an input oneDNN does not take (NCHW): plain path
    else:
        if channels_last and weight.dtype == compute and _packable(weight) and not torch.compiler.is_compiling():
            packed = _packed_for(weight, stride, padding, x.shape)
            weight = weight if packed is None else packed
        onednn = weight.is_mkldnn or _uses_onednn(channels_last, weight.shape[-1])
        if weight.dtype != compute:
            weight = weight.to(compute)
    if bias is not None and (bias.dtype != compute or not bias.is_contiguous()):
        bias = bias.to(compute).contiguous()  # oneDNN reads the bias as dense memory
    return _run(x, weight, bias, stride, padding, residual, relu, channels_last, onednn)


def _run(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, padding: int,
         residual: Optional[torch.Tensor], relu: bool, channels_last: bool, onednn: bool) -> torch.Tensor:
    """The computation: weight (dense, or oneDNN-packed when ``onednn``) and dense bias in the compute dtype."""
    out_dtype = x.dtype
    if weight.dtype != out_dtype:
        x = x.to(weight.dtype)
        residual = residual.to(weight.dtype) if residual is not None else None
    if onednn:
        y = onednn_fused(x, weight, bias, stride, padding, residual, relu)
    else:
        y = F.conv2d(x, weight, bias, stride, padding)
        if residual is not None:
            y.add_(residual)
        if relu:
            y.relu_()
    if y.dtype != out_dtype:
        y = y.to(out_dtype)
    return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def onednn_fused(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, padding: int,
                  residual: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
    """One oneDNN convolution primitive with bias, sum (residual) and ReLU post-ops.

    x: [N, Cin, H, W] channels_last, in the weight's dtype; weight: dense or ``pack_weight``-ed; bias: dense
    [Cout] or None. Converted models call this directly for their packed 3x3 convs (per-call Python cost
    matters at ~270 convs a forward); everything else goes through ``conv_bn_act``.
    """
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
