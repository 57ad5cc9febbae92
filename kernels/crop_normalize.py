"""Triton kernel for ``crop_normalize``: every box's affine crop of one uint8 HWC image, normalised, in one pass.

Each program covers BLOCK output pixels (all boxes' pixels in one flat range, box-major, row-major); each pixel
reads its 4 taps x 3 channels of the image once, blends them in fp32 as the reference does (pose_reference.py:
v = (1 - fy) top + fy bottom, a tap outside the image contributing nothing, validity decided on the float
coordinates) and writes its 3 channels: three planes for NCHW, three consecutive values for channels_last.
"""
from __future__ import annotations

import functools
from typing import List, Tuple

import torch
import triton
import triton.language as tl
from triton import knobs

from . import needs_int64

_INTERPRETED = knobs.runtime.interpret
# The interpreter runs each program in Python: one large block there.
BLOCK, NUM_WARPS = (4096, 4) if _INTERPRETED else (256, 4)


@triton.jit
def _tap(image_ptr, row, col, ok, mask, c, W):
    """Channel c of image pixel (row, col) as fp32, 0 where ``ok`` is false (outside the image)."""
    return tl.load(image_ptr + (row * W + col) * 3 + c, mask=mask & ok, other=0).to(tl.float32)


@triton.jit
def _crop_normalize_kernel(
    out_ptr,     # [K, 3, OH, OW] dense NCHW (NHWC order when CHANNELS_LAST)
    image_ptr,   # [H, W, 3] uint8, dense
    theta_ptr,   # [K, 2, 3] float32, dense: output (x, y, 1) -> input (x, y)
    norm_ptr,    # [6] float32: scale[0..2] = 1 / (255 std), shift[0..2] = -mean / std
    H, W, OH, OW, pixels,  # pixels = K * OH * OW
    CHANNELS_LAST: tl.constexpr,
    INT64: tl.constexpr,  # some offset can reach 2**31: index in int64
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    mask = i < pixels
    x = i % OW
    row = i // OW
    y = row % OH
    k = row // OH
    t = theta_ptr + k * 6
    xf = x.to(tl.float32)
    yf = y.to(tl.float32)
    x_in = tl.load(t, mask=mask, other=0.0) * xf + tl.load(t + 1, mask=mask, other=0.0) * yf + \
        tl.load(t + 2, mask=mask, other=0.0)
    y_in = tl.load(t + 3, mask=mask, other=0.0) * xf + tl.load(t + 4, mask=mask, other=0.0) * yf + \
        tl.load(t + 5, mask=mask, other=0.0)
    x0 = tl.floor(x_in)
    y0 = tl.floor(y_in)
    fx = x_in - x0
    fy = y_in - y0
    c0 = (x0 >= 0) & (x0 <= W - 1)
    c1 = (x0 + 1 >= 0) & (x0 + 1 <= W - 1)
    r0 = (y0 >= 0) & (y0 <= H - 1)
    r1 = (y0 + 1 >= 0) & (y0 + 1 <= H - 1)
    # Indices only from valid coordinates: an enormous or infinite one never becomes an address.
    col0 = tl.where(c0, x0, 0.0).to(i.dtype)
    col1 = tl.where(c1, x0 + 1, 0.0).to(i.dtype)
    row0 = tl.where(r0, y0, 0.0).to(i.dtype)
    row1 = tl.where(r1, y0 + 1, 0.0).to(i.dtype)
    plane = OH * OW
    for c in tl.static_range(3):
        top = tl.where(c0, (1 - fx) * _tap(image_ptr, row0, col0, r0 & c0, mask, c, W), 0.0) + \
            tl.where(c1, fx * _tap(image_ptr, row0, col1, r0 & c1, mask, c, W), 0.0)
        bottom = tl.where(c0, (1 - fx) * _tap(image_ptr, row1, col0, r1 & c0, mask, c, W), 0.0) + \
            tl.where(c1, fx * _tap(image_ptr, row1, col1, r1 & c1, mask, c, W), 0.0)
        v = tl.where(r0, (1 - fy) * top, 0.0) + tl.where(r1, fy * bottom, 0.0)
        o = v * tl.load(norm_ptr + c) + tl.load(norm_ptr + 3 + c)
        if CHANNELS_LAST:
            dst = out_ptr + i * 3 + c
        else:
            dst = out_ptr + (k * 3 + c) * plane + (i - k * plane)
        tl.store(dst, o.to(out_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=64)
def norm_constants(mean: Tuple[float, ...], std: Tuple[float, ...], device: torch.device) -> torch.Tensor:
    """[6] float32: 1 / (255 std[c]) then -mean[c] / std[c], computed in fp64 and rounded once (as the C++ op).
    Kept per (mean, std, device): a pipeline uses one, and a fresh host-to-device copy per call would wait."""
    values = [1.0 / (255.0 * s) for s in std] + [-m / s for m, s in zip(mean, std)]
    return torch.tensor(values, dtype=torch.float32, device=device)


def crop_normalize(image: torch.Tensor, theta: torch.Tensor, out_h: int, out_w: int, mean: List[float],
                   std: List[float], dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """The op on validated inputs (hrnet_fast/ops/pose_checks.py): dense image and theta on one device."""
    k = theta.shape[0]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((k, 3, out_h, out_w), dtype=dtype, device=image.device).contiguous(memory_format=fmt)
    pixels = k * out_h * out_w
    if pixels == 0:
        return out
    grid = (triton.cdiv(pixels, BLOCK),)
    _crop_normalize_kernel[grid](out, image, theta, norm_constants(tuple(mean), tuple(std), image.device), image.shape[0],
                                 image.shape[1], out_h, out_w, pixels, CHANNELS_LAST=bool(channels_last),
                                 INT64=needs_int64(out, image), BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out
