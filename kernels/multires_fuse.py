"""Triton kernel for ``multires_fuse``: ``relu(x + sum_j up_nearest(low_res[j]) + sum_k same_res[k])`` in one pass.

The op is memory-bound, so the kernel reads every input once and writes the output once:
- Each program covers BLOCK consecutive elements of the output in the output's own memory order (NCHW, or NHWC
  when x is channels_last), so stores are contiguous; (n, c, h, w) are recovered from the flat index.
- A low-resolution input z_j with factor f_j = 2**s_j is read in place at (n, c, h >> s_j, w >> s_j): nearest
  upsampling by an integer factor is exactly that index map, and no upsampled copy is ever materialised.
- Every input is addressed through its own strides, so NCHW, channels_last, mixed layouts and strided views are
  read without copies.
- The number of low_res and same_res inputs are constexprs: one compiled variant per count, no dead loads.
- Sums run in fp32 whatever the storage dtype; the result is cast once, at the store.
"""
from __future__ import annotations

from typing import List

import torch
import triton
import triton.language as tl
from triton import knobs

from hrnet_fast.ops.library import output_memory_format

from . import needs_int64

MAX_TERMS = 4  # slots per input kind in the kernel signature (checks.MAX_TERMS)


def _configs() -> List[triton.Config]:
    # Read when the module is imported, as triton.jit reads it when decorating. The interpreter runs each program
    # in Python, at a cost that grows with the number of programs: one large block, no benchmarking of alternatives.
    if knobs.runtime.interpret:
        return [triton.Config({"BLOCK": 4096})]
    return [triton.Config({"BLOCK": block}, num_warps=warps)
            for block, warps in ((256, 2), (512, 4), (1024, 4), (1024, 8), (2048, 8), (4096, 8))]


@triton.jit
def _load_low(ptr, n, c, h, w, sn, sc, sh, sw, shift, mask):
    """One low-resolution input at (n, c, h >> shift, w >> shift), as fp32."""
    offs = n * sn + c * sc + (h >> shift) * sh + (w >> shift) * sw
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_same(ptr, n, c, h, w, sn, sc, sh, sw, mask):
    """One full-resolution input at (n, c, h, w), as fp32."""
    return tl.load(ptr + n * sn + c * sc + h * sh + w * sw, mask=mask, other=0.0).to(tl.float32)


@triton.autotune(configs=_configs(), key=["total", "C", "H", "W", "N_LOW", "N_SAME", "CHANNELS_LAST"])
@triton.jit
def _multires_fuse_kernel(
    y_ptr,  # [N, C, H, W] output, dense in NCHW order (NHWC order when CHANNELS_LAST)
    x_ptr,  # [N, C, H, W], strides sxn, sxc, sxh, sxw
    z0_ptr, z1_ptr, z2_ptr, z3_ptr,  # low_res[j]: [N, C, H >> shift_j, W >> shift_j], strides sz{j}n..sz{j}w
    d0_ptr, d1_ptr, d2_ptr, d3_ptr,  # same_res[k]: [N, C, H, W], strides sd{k}n..sd{k}w
    total, C, H, W,  # total = N * C * H * W
    sxn, sxc, sxh, sxw,
    sz0n, sz0c, sz0h, sz0w, shift0,
    sz1n, sz1c, sz1h, sz1w, shift1,
    sz2n, sz2c, sz2h, sz2w, shift2,
    sz3n, sz3c, sz3h, sz3w, shift3,
    sd0n, sd0c, sd0h, sd0w,
    sd1n, sd1c, sd1h, sd1w,
    sd2n, sd2c, sd2h, sd2w,
    sd3n, sd3c, sd3h, sd3w,
    N_LOW: tl.constexpr,  # how many z slots are real (the rest alias x and are never read)
    N_SAME: tl.constexpr,  # how many d slots are real
    RELU: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,  # the output's memory order
    INT64: tl.constexpr,  # some offset can reach 2**31: index in int64
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    if CHANNELS_LAST:
        c = idx % C
        t = idx // C
        w = t % W
        t = t // W
        h = t % H
        n = t // H
    else:
        w = idx % W
        t = idx // W
        h = t % H
        t = t // H
        c = t % C
        n = t // C

    acc = _load_same(x_ptr, n, c, h, w, sxn, sxc, sxh, sxw, mask)
    if N_LOW > 0:
        acc += _load_low(z0_ptr, n, c, h, w, sz0n, sz0c, sz0h, sz0w, shift0, mask)
    if N_LOW > 1:
        acc += _load_low(z1_ptr, n, c, h, w, sz1n, sz1c, sz1h, sz1w, shift1, mask)
    if N_LOW > 2:
        acc += _load_low(z2_ptr, n, c, h, w, sz2n, sz2c, sz2h, sz2w, shift2, mask)
    if N_LOW > 3:
        acc += _load_low(z3_ptr, n, c, h, w, sz3n, sz3c, sz3h, sz3w, shift3, mask)
    if N_SAME > 0:
        acc += _load_same(d0_ptr, n, c, h, w, sd0n, sd0c, sd0h, sd0w, mask)
    if N_SAME > 1:
        acc += _load_same(d1_ptr, n, c, h, w, sd1n, sd1c, sd1h, sd1w, mask)
    if N_SAME > 2:
        acc += _load_same(d2_ptr, n, c, h, w, sd2n, sd2c, sd2h, sd2w, mask)
    if N_SAME > 3:
        acc += _load_same(d3_ptr, n, c, h, w, sd3n, sd3c, sd3h, sd3w, mask)
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as in torch.relu
    tl.store(y_ptr + idx, acc.to(y_ptr.dtype.element_ty), mask=mask)


def multires_fuse(x: torch.Tensor, low_res: List[torch.Tensor], same_res: List[torch.Tensor], *,
                  relu: bool) -> torch.Tensor:
    """``relu(x + sum_j up_nearest(low_res[j]) + sum_k same_res[k])`` on validated inputs (see checks.py).

    Returns a new tensor in x's dtype and memory format; an empty x gives an empty output without a launch.
    """
    y = torch.empty_like(x, memory_format=output_memory_format(x))
    if y.numel() == 0:
        return y
    _, c, h, w = x.shape
    # Unused slots alias x with zero strides; N_LOW / N_SAME keep the kernel from reading them.
    low_args, same_args = [], []
    low_ptrs = list(low_res) + [x] * (MAX_TERMS - len(low_res))
    same_ptrs = list(same_res) + [x] * (MAX_TERMS - len(same_res))
    for z in low_res:
        shift = (h // z.shape[2]).bit_length() - 1  # factor is a power of two (checked)
        low_args += [*z.stride(), shift]
    low_args += [0] * (5 * (MAX_TERMS - len(low_res)))
    for d in same_res:
        same_args += list(d.stride())
    same_args += [0] * (4 * (MAX_TERMS - len(same_res)))

    total = y.numel()
    grid = lambda meta: (triton.cdiv(total, meta["BLOCK"]),)  # noqa: E731
    _multires_fuse_kernel[grid](
        y, x, *low_ptrs, *same_ptrs, total, c, h, w, *x.stride(), *low_args, *same_args,
        N_LOW=len(low_res), N_SAME=len(same_res), RELU=bool(relu),
        CHANNELS_LAST=output_memory_format(x) == torch.channels_last,
        INT64=needs_int64(y, x, *low_res, *same_res),
    )
    return y
