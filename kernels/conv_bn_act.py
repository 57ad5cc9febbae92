"""Triton kernel for ``conv_bn_act``: ``relu(conv2d(x, w', b') + residual)`` with BN folded into (w', b').

Implicit GEMM, never materialising im2col:
    M = N * Ho * Wo (output pixels), N = Cout, K = KH * KW * Cin, ordered (kh, kw, cin) with cin fastest.
Each program owns a BLOCK_M x BLOCK_N output tile and walks K in one loop over (tap, channel chunk): for each
of the KH * KW taps it gathers the shifted input rows once (padding handled by a row mask), then steps along Cin
in BLOCK_K chunks, each a ``tl.dot`` accumulating in fp32. The epilogue adds the bias, then the residual, then
applies ReLU, and stores once in x's memory format.

Why K is (kh, kw, cin), masked per tap, rather than flat K padded to a multiple of 16:
- HRNet's channel counts (3, 18, 36, 72, 144) are not multiples of 16, and tensor-core dots need K tiles of at
  least 16. Masking the last channel chunk of each tap (loads return 0 beyond Cin) keeps every tile legal
  without padded copies of x or the weights.
- With cin fastest, a channels_last input gives contiguous K loads (one pixel's channels); NCHW and strided
  inputs are read through their strides, so no layout conversion is ever launched.
- The tap's input coordinates and padding mask depend only on (tap, output pixel), so they are computed per
  tap instead of per K element (a flat K index would need a division by Cin for every element).
The cost is masked lanes in a tap's last chunk (Cin = 18 with BLOCK_K = 16 loads 32 channels for 18); the
autotuner picks BLOCK_K per shape, and ``_prune`` drops tiles far larger than Cin or Cout.

Cin is a compile-time constant (a network has a handful of channel counts): the K loop's trip count is then
known when compiling. The Triton 3.6 interpreter also needs that: with numpy >= 2.4 it cannot iterate over a
runtime loop bound (triton-lang/triton#9171).

fp32 inputs follow ``torch.backends.cudnn.allow_tf32`` like PyTorch's own convolution (``conv_dot_precision``):
TF32 dots when it allows them, IEEE fp32 dots (equal to PyTorch's fp32 convolution to rounding) when not.
bfloat16 runs on GPUs only: the interpreter multiplies bfloat16 dot operands as raw integers, so it is refused
there with an error rather than returning wrong numbers.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import triton
import triton.language as tl
from triton import knobs

from hrnet_fast.ops.checks import conv_out_shape
from hrnet_fast.ops.library import output_memory_format
from hrnet_fast.ops.weights import dense_in_activation_layout

from . import conv_dot_precision, needs_int64

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): from small tiles for 7x7 maps at batch 1 to large tiles
# for the 56x56+ stages and large batches.
_GPU_TILES = (
    (32, 32, 16, 2, 3),
    (64, 32, 16, 4, 3),
    (64, 32, 32, 4, 3),
    (64, 64, 32, 4, 3),
    (128, 32, 32, 4, 3),
    (128, 64, 32, 4, 3),
    (128, 64, 64, 8, 3),
    (64, 128, 32, 4, 3),
    (128, 128, 32, 8, 3),
)


# triton.jit decides at decoration whether the kernel is interpreted; read the same knob once, here.
_INTERPRETED = knobs.runtime.interpret


def _configs() -> List[triton.Config]:
    # The interpreter runs each program and loop step in Python, at a cost that grows with their number, not with
    # the tile size: one large tile, and no benchmarking of alternatives.
    if _INTERPRETED:
        return [triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32})]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=warps, num_stages=stages)
            for m, n, k, warps, stages in _GPU_TILES]


def _prune(configs: List[triton.Config], named_args: Dict, **kwargs) -> List[triton.Config]:
    """Drops tiles whose K or N block exceeds the padded channel count: they only add masked lanes."""
    cin_cap = max(16, triton.next_power_of_2(kwargs["CIN"]))
    cout_cap = max(16, triton.next_power_of_2(named_args["Cout"]))
    kept = [c for c in configs if c.kwargs["BLOCK_K"] <= cin_cap and c.kwargs["BLOCK_N"] <= cout_cap]
    return kept or configs[:1]


# Tuned per GEMM shape: M = N * Ho * Wo (the batch included, since the best BLOCK_M depends on it), Cout, and
# K = KH * KH * CIN; the stride changes the input access pattern. The autotuner adds the tensors' dtypes itself.
@triton.autotune(configs=_configs(), key=["N", "CIN", "Cout", "H", "W", "KH", "STRIDE"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _conv_bn_act_kernel(
    x_ptr,  # [N, Cin, H, W], strides sxn, sxc, sxh, sxw
    w_ptr,  # [Cout, Cin, KH, KH] with BN folded in, strides swo, swi, swh, sww
    b_ptr,  # [Cout], stride sb; aliases w_ptr (never read) when HAS_BIAS is False
    r_ptr,  # [N, Cout, Ho, Wo], strides srn, src, srh, srw; aliases x_ptr (never read) when HAS_RESIDUAL is False
    y_ptr,  # [N, Cout, Ho, Wo] output, strides syn, syc, syh, syw (x's memory format)
    M, N, H, W, Cout, Ho, Wo,  # M = N * Ho * Wo; N only keys the autotuning
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    sb,
    srn, src, srh, srw,
    syn, syc, syh, syw,
    CIN: tl.constexpr,  # input channels: fixes the K loop's trip count at compile time
    KH: tl.constexpr,  # kernel size (square), 1 or 3
    STRIDE: tl.constexpr,
    PADDING: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    RELU: tl.constexpr,
    INT64: tl.constexpr,  # some offset can reach 2**31: index in int64
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 inputs (conv_dot_precision)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rk = tl.arange(0, BLOCK_K)
    if INT64:  # every index that multiplies a stride, so each product is computed in int64
        pid_m = pid_m.to(tl.int64)
        pid_n = pid_n.to(tl.int64)
        rk = rk.to(tl.int64)

    # Output pixels (rows of the GEMM) of this tile.
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = rm < M
    ow = rm % Wo
    t = rm // Wo
    oh = t % Ho
    n = t // Ho
    ih0 = oh * STRIDE - PADDING
    iw0 = ow * STRIDE - PADDING

    # Output channels (columns of the GEMM) of this tile.
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < Cout

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    chunks: tl.constexpr = (CIN + BLOCK_K - 1) // BLOCK_K
    for kk in range(0, KH * KH * chunks):
        tap = kk // chunks
        kh = tap // KH
        kw = tap % KH
        ci = (kk % chunks) * BLOCK_K + rk
        k_ok = ci < CIN
        ih = ih0 + kh
        iw = iw0 + kw
        row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # zero padding
        x_rows = n * sxn + ih * sxh + iw * sxw
        a = tl.load(x_ptr + x_rows[:, None] + ci[None, :] * sxc, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptr + rn[None, :] * swo + ci[:, None] * swi + kh * swh + kw * sww,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    # Epilogue: bias -> +residual -> ReLU, one store.
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn * sb, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_ok = m_ok[:, None] & n_ok[None, :]
    if HAS_RESIDUAL:
        r_offs = (n * srn + oh * srh + ow * srw)[:, None] + rn[None, :] * src
        acc += tl.load(r_ptr + r_offs, mask=out_ok, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as in torch.relu
    y_offs = (n * syn + oh * syh + ow * syw)[:, None] + rn[None, :] * syc
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=out_ok)


def prepare_weight(weight: torch.Tensor, *, stride: int, padding: int, channels_last: bool,
                   x_shape: Sequence[int]) -> Optional[torch.Tensor]:
    """A converted model's weight as this kernel reads it (``hrnet_fast.ops.weights``): dense in the activations'
    layout, so channels_last weights load Cin-contiguous like the input rows."""
    return dense_in_activation_layout(weight, stride=stride, padding=padding, channels_last=channels_last,
                                      x_shape=x_shape)


def conv_bn_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, stride: int, padding: int,
                residual: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias, stride, padding) + residual)`` on validated inputs (see checks.py).

    Returns a new tensor in x's dtype and memory format; an empty output (batch 0, or no output channels) is
    returned without a launch. Raises NotImplementedError for bfloat16 under the Triton interpreter.
    """
    if _INTERPRETED and x.dtype == torch.bfloat16:
        raise NotImplementedError("the Triton interpreter (TRITON_INTERPRET=1) cannot run tl.dot on bfloat16 "
                                  "operands (it multiplies their raw bits as integers); run bfloat16 convolutions "
                                  "with the triton backend on a GPU, or use float32/float16 here")
    out_shape = conv_out_shape(x.shape, weight.shape, stride, padding)
    y = torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    if y.numel() == 0:
        return y
    n, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    _, _, ho, wo = out_shape
    bias_arg = bias if bias is not None else weight
    residual_arg = residual if residual is not None else x
    m = n * ho * wo
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(cout, meta["BLOCK_N"]))  # noqa: E731
    _conv_bn_act_kernel[grid](
        x, weight, bias_arg, residual_arg, y,
        m, n, h, w, cout, ho, wo,
        *x.stride(), *weight.stride(), bias.stride(0) if bias is not None else 0,
        *(residual.stride() if residual is not None else (0, 0, 0, 0)), *y.stride(),
        CIN=cin, KH=k, STRIDE=int(stride), PADDING=int(padding), HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None, RELU=bool(relu),
        INT64=needs_int64(*(t for t in (x, weight, y, residual) if t is not None)),
        DOT_PRECISION=conv_dot_precision(x.dtype),
    )
    return y
