"""Triton kernel for ``seg_normalize``: uint8 [N, H, W, 3] images -> (v / 255 - mean[c]) / std[c] as [N, 3, H, W].

Each program covers BLOCK consecutive output elements in the output's memory order (NCHW, or NHWC when
channels_last), so stores are contiguous; the source byte of each element is found from (n, c, pixel). fp32
arithmetic with IEEE division (``div_rn``), as the reference computes it; the result is rounded once at the store.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

from hrnet_fast.ops.seg_checks import normalize_out_format

# Output elements per program: one large block under the interpreter (its cost grows with the program count).
BLOCK = 4096 if knobs.runtime.interpret else 1024


@triton.jit
def _seg_normalize_kernel(
    images_ptr,  # [N, H, W, 3] uint8, dense
    out_ptr,  # [N, 3, H, W], dense NCHW (NHWC when CHANNELS_LAST)
    total, plane,  # total = N * 3 * H * W, plane = H * W
    mean0, mean1, mean2, std0, std1, std2,
    CHANNELS_LAST: tl.constexpr,
    ROUNDING: tl.constexpr,  # "rtne" for a 16-bit output, None for fp32 (no downcast)
    BLOCK: tl.constexpr,
):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    if CHANNELS_LAST:
        src = idx
        c = idx % 3
    else:
        pixel = idx % plane
        t = idx // plane
        c = t % 3
        src = ((t // 3) * plane + pixel) * 3 + c
    v = tl.load(images_ptr + src, mask=mask, other=0).to(tl.float32)
    mean = tl.where(c == 0, mean0, tl.where(c == 1, mean1, mean2))
    std = tl.where(c == 0, std0, tl.where(c == 1, std1, std2))
    y = tl.math.div_rn(tl.math.div_rn(v, 255.0) - mean, std)
    # Round to nearest even, as torch casts (the default may truncate).
    tl.store(out_ptr + idx, y.to(out_ptr.dtype.element_ty, fp_downcast_rounding=ROUNDING), mask=mask)


def seg_normalize(images: torch.Tensor, mean, std, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """Validated dense [N, H, W, 3] uint8 images (hrnet_fast/ops/seg_checks.py) -> [N, 3, H, W] in ``dtype``."""
    n, h, w, _ = images.shape
    out = torch.empty((n, 3, h, w), dtype=dtype, device=images.device).contiguous(
        memory_format=normalize_out_format(channels_last))
    total = out.numel()
    if total:
        # Python floats reach the kernel as fp32 scalars, as the reference's fp32 mean/std tensors hold them.
        _seg_normalize_kernel[(triton.cdiv(total, BLOCK),)](images, out, total, h * w, *map(float, mean),
                                                             *map(float, std), CHANNELS_LAST=bool(channels_last),
                                                             ROUNDING=None if dtype == torch.float32 else "rtne",
                                                             BLOCK=BLOCK)
    return out
