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
* wide 1x1 kernels (Cin*Cout >= 64*256), and 1x1 kernels from 4M multiply-adds a call (fusion convs at batch 8),
  on channels_last input, packed with ``pack_weight``: the same.
* other 1x1 kernels, and NCHW input: ``F.conv2d`` (ATen picks its own GEMM or oneDNN kernel) and then ``+ residual``
  and ReLU in place on its output. For the small 1x1 convolutions of HRNet's fusion layers (7x7 to 28x28 maps)
  oneDNN's per-call overhead makes its fused op 2-4x slower than this; on NCHW input, oneDNN fuses a residual
  only after converting to channels_last (and its NCHW fallback rejects bfloat16 with a residual).

Both paths are at least as fast as eager conv + BatchNorm + ReLU: they run the same convolution with BN folded
and fewer passes over the output.

Reduced precision (the epilogue contract: bias, residual and ReLU applied to the float32 accumulator, one
rounding at the end). Where oneDNN computes a dtype natively (``native_compute``: bfloat16 with AVX512/AMX,
float16 with AVX512-FP16 or AVX-NE-CONVERT, as ``cpu_features.native_dtypes()`` reports), the oneDNN path runs in
that dtype with bias, residual and ReLU as post-ops on the float32 accumulator. Every other combination computes
in float32 and rounds once: a dtype oneDNN does not compute natively (about 10x faster than ATen's reduced-precision
CPU convolution, and as accurate), and a reduced-precision convolution with a residual that oneDNN's post-ops do
not take (ATen's path, NCHW input, a one-channel or 1x1 residual), because ATen's reduced-precision convolution
rounds its result before the residual is added (float16: a conv of 8e4 becomes inf before a residual of -6e4).
Without a residual, ATen's reduced-precision convolution is exact to the contract: bias is added in its
accumulator and ReLU commutes with rounding. So the answer is the same on every CPU, up to float32 summation order.
"""
from __future__ import annotations

import functools
import weakref
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from . import onednn_conv
from .onednn_conv import OnednnConv
from .tensor_identity import version


# oneDNN's fused post-op convolution and weight packing (``_convolution_pointwise``, its ``.binary`` variant,
# ``_reorder_convolution_weight``), named once so tests can stand in for a dtype this CPU cannot run natively.
ONEDNN = torch.ops.mkldnn


@functools.lru_cache(maxsize=None)
def _onednn_ops() -> bool:
    """Whether this torch ships oneDNN and its fused post-op convolution ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


@functools.lru_cache(maxsize=None)
def _native_reduced(dtype: torch.dtype) -> bool:
    from .. import cpu_features
    return bool(cpu_features.native_dtypes()[{torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]])


def native_compute(dtype: torch.dtype) -> bool:
    """Whether oneDNN computes convolutions in ``dtype`` natively in this process (float32 always; bfloat16 and
    float16 as ``cpu_features.native_dtypes()`` says, which follows ``ONEDNN_MAX_CPU_ISA``). Every path choice
    reads the machine through this one function, so tests replace it to take another CPU's path here."""
    return dtype == torch.float32 or (_onednn_ops() and _native_reduced(dtype))


def availability() -> Tuple[bool, str]:
    """(live, note): always live on CPU; the note says which paths this machine takes."""
    if not _onednn_ops():
        return True, ("torch has no oneDNN fused convolution here: ATen convolution + in-place epilogue for every "
                      "shape")
    own, why = onednn_conv.available()
    note = (f"converted models: channels_last convs through oneDNN primitives kept per layer ({why})" if own else
            f"converted models: ATen's oneDNN op per call ({why})")
    note += "; oneDNN fused post-op convolution for 3x3 channels_last, ATen convolution + in-place epilogue otherwise"
    widened = [name for name, dt in (("bfloat16", torch.bfloat16), ("float16", torch.float16))
               if not native_compute(dt)]
    if widened:
        note += f"; {' and '.join(widened)} computed in float32 (oneDNN does not compute it natively on this CPU)"
    return True, note


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if native_compute(dtype) else torch.float32


def _is_channels_last(x: torch.Tensor) -> bool:
    """channels_last and not also plain contiguous (the library's output-format rule)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _uses_onednn(channels_last: bool, kernel_size: int) -> bool:
    return kernel_size == 3 and channels_last and _onednn_ops() and torch._C._get_mkldnn_enabled()


# 1x1 convs go through oneDNN only when packed and wide, or big enough: per call, oneDNN costs more than ATen's
# GEMM (~30-40 us on an AVX512 Xeon, ~7-10 us on an AMD EPYC), which pays off from about Cin*Cout = 64*256
# (measured on the Xeon, one thread: 64->256 at 56x56 1062 -> 957 us, 1024->2048 at 7x7 2553 -> 1868 us; 144->18
# at 7x7 12 -> 32 us), or from about 4M multiply-adds a call (measured on the EPYC, one thread, minimum of 200:
# 8x72x14x14->36 104 -> 67 us, 8x36x28x28->18 136 -> 88 us; at 1M, batch 2-4, they are even; at batch 1 ATen's
# GEMM is 7-10 us faster on every fusion-layer shape).
ONEDNN_1X1_MIN_CIN_COUT = 64 * 256
ONEDNN_1X1_MIN_MACS = 4_000_000


def _packable(weight: torch.Tensor, stride: int, padding: int, x_shape: Sequence[int]) -> bool:
    """Whether oneDNN should run this weight packed on inputs shaped ``x_shape``: any 3x3; a 1x1 from Cin*Cout =
    ONEDNN_1X1_MIN_CIN_COUT or from ONEDNN_1X1_MIN_MACS multiply-adds a call."""
    if not _onednn_ops():
        return False
    cout, cin, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    if k != 1 or cout * cin >= ONEDNN_1X1_MIN_CIN_COUT:
        return True
    n, _, h, w = x_shape
    ho, wo = (h + 2 * padding - 1) // stride + 1, (w + 2 * padding - 1) // stride + 1
    return n * ho * wo * cin * cout >= ONEDNN_1X1_MIN_MACS


def pack_weight(weight: torch.Tensor, stride: int, padding: int, x_shape: Sequence[int]) -> Optional[torch.Tensor]:
    """The folded ``weight`` [Cout, Cin, k, k] in oneDNN's blocked layout for inputs shaped like ``x_shape``
    (other batch and map sizes still work), or None where oneDNN should not run it (a narrow 1x1 on small
    inputs, no oneDNN).

    Pass the result as ``weight`` to ``conv_bn_act`` (or ``torch.ops.hrnet_fast.conv_bn_act`` with backend
    "cpu"): a packed weight runs through oneDNN on channels_last input, without the per-call reorder (1.2-1.6x
    on HRNet's 3x3 convs). It is an opaque MKLDNN tensor: keep it as a plain attribute (it neither pickles nor
    deep-copies) and rebuild it after moving or casting.
    """
    if weight.dim() != 4 or len(x_shape) != 4:
        raise ValueError(f"pack_weight expects a 4-D weight and a 4-D x_shape, got {tuple(weight.shape)} and "
                         f"{tuple(x_shape)}")
    if not _packable(weight, stride, padding, x_shape):
        return None
    w = weight.detach().to(_compute_dtype(weight.dtype)).contiguous()
    return ONEDNN._reorder_convolution_weight(w, [padding, padding], [stride, stride], [1, 1], 1,
                                                        list(x_shape))


def prepare_weight(weight: torch.Tensor, *, stride: int, padding: int, channels_last: bool,
                   x_shape: Sequence[int], groups: int = 1) -> Optional[Union[torch.Tensor, OnednnConv]]:
    """The cpu backend's form of a converted model's weight (``hrnet_fast.ops.weights``). With channels_last
    activations: an ``OnednnConv`` (oneDNN primitives kept per input shape) where the extension has oneDNN and
    this CPU computes the weight's dtype natively; else the weight packed for ATen's oneDNN op where that runs
    the conv (``pack_weight``, ungrouped convs only). None (the dense weight as is) otherwise."""
    if not channels_last:
        return None
    if native_compute(weight.dtype) and onednn_conv.available()[0]:
        return OnednnConv(weight, stride, padding, groups)
    return pack_weight(weight, stride, padding, x_shape) if groups == 1 else None


# Packed copies of dense weights seen by ``conv_bn_act``: id(weight) -> (weakref, (version, stride, padding,
# x_shape[1:]), packed). An entry lives as long as its weight and is rebuilt when the weight changes in place.
_packed_cache: Dict[int, Tuple[weakref.ref, Tuple, Optional[torch.Tensor]]] = {}


def _packed_for(weight: torch.Tensor, stride: int, padding: int, x_shape: Sequence[int]) -> Optional[torch.Tensor]:
    """``pack_weight(weight, ...)``, packed once per weight tensor (and again after an in-place change)."""
    key = (version(weight), stride, padding, tuple(x_shape[1:]))
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
    else:
        onednn = _uses_onednn(channels_last, weight.shape[-1]) or (
            channels_last and _packable(weight, stride, padding, x.shape) and not torch.compiler.is_compiling())
    if residual is not None and compute != torch.float32 and not (onednn and sum_post_op_takes(residual)):
        # Outside oneDNN's post-ops the convolution would be rounded to x's dtype before the residual is added.
        compute, onednn = torch.float32, False
    if weight.is_mkldnn and not onednn:
        weight = weight.to_dense()  # a packed weight met an input oneDNN does not take here: plain path
    elif onednn and not weight.is_mkldnn and _compute_dtype(weight.dtype) == compute and \
            _packable(weight, stride, padding, x.shape) and not torch.compiler.is_compiling():
        packed = _packed_for(weight, stride, padding, x.shape)
        weight = weight if packed is None else packed
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
                 residual: Optional[torch.Tensor], relu: bool, residual_is_free: bool = False) -> torch.Tensor:
    """One oneDNN convolution primitive with bias, sum (residual) and ReLU post-ops.

    x: [N, Cin, H, W] channels_last, in the weight's dtype; weight: dense or ``pack_weight``-ed; bias: dense
    [Cout] or None; residual: [N, Cout, Ho, Wo]. Converted models call this directly for their packed convs
    (per-call Python cost matters at ~270 convs a forward); everything else goes through ``conv_bn_act``.

    The residual is summed in place: the output is written over a channels_last copy of ``residual`` in x's
    dtype, or over ``residual`` itself when ``residual_is_free`` (the caller holds no other use of it, and it is
    already that copy). ATen's out-of-place ``.binary`` variant copies the residual first at about twice the cost
    of our copy (HRNet-W32 pose, 2 threads: 242 vs 152 us a 32x64x48 call), and a free residual needs no copy.
    """
    if residual is not None and not sum_post_op_takes(residual):
        if x.dtype != torch.float32:  # a separate add would follow a rounded convolution: float32 instead
            return conv_bn_act(x, weight, bias, stride=stride, padding=padding, residual=residual, relu=relu)
        y = ONEDNN._convolution_pointwise(x, weight, bias, [padding, padding], [stride, stride], [1, 1],
                                          1, "none", [], None)
        y.add_(residual)
        return y.relu_() if relu else y
    pad, strides, dilation = [padding, padding], [stride, stride], [1, 1]
    if residual is not None:
        if not (residual_is_free and residual.dtype == x.dtype and _is_channels_last(residual)
                and residual.data_ptr() != x.data_ptr()):
            residual = residual.to(dtype=x.dtype, memory_format=torch.channels_last, copy=True)
        return ONEDNN._convolution_pointwise_.binary(residual, x, weight, bias, pad, strides, dilation, 1,
                                                     "add", None, "relu" if relu else None, [], None)
    return ONEDNN._convolution_pointwise(x, weight, bias, pad, strides, dilation, 1,
                                         "relu" if relu else "none", [], None)


def sum_post_op_takes(residual: torch.Tensor) -> bool:
    """Whether oneDNN's sum post-op can read ``residual`` [N, Cout, Ho, Wo]: it needs the residual unambiguously
    channels_last, and cannot create that memory for one output channel or a 1x1 output map (whose strides read
    as NCHW too)."""
    return residual.shape[1] > 1 and residual.shape[2] * residual.shape[3] > 1
