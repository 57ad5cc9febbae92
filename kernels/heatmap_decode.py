"""Triton kernel for ``heatmap_decode``: flip merge, peak, classic or DARK refinement and the map back to image pixels,
one program per (box, joint) heatmap; only its (x, y, score) is written.

- The scan reads the map in BLOCK-wide chunks, merging the flipped crop's map on the fly (flipped back, joints
  reordered by flip_index, optionally shifted one pixel right). Each lane keeps its first maximum (strictly
  greater replaces), and the reduction takes the smallest index among the lanes holding the maximum: the first
  maximum in row-major order, as torch.argmax.
- DARK needs the blurred map B only at the 13 stencil points around the peak (vectorised over [stencil point, tap
  column], a loop over tap rows) and, where the log's clamp may act (some stencil B below 2e-10; see
  csrc/pose_math.h), max(B) over the whole map: only such maps run the whole blur. Where it does not run, L = log B: the rescale's constant log cancels in every
  difference the Taylor step takes.
- The map's size in scan steps and the blur size are constexprs (one variant per heatmap size and blur size, a
  pipeline has one of each), so every loop has a fixed trip count; the blur loops sit under run-time ifs.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from triton import knobs

from hrnet_fast.ops.pose_reference import gaussian_taps

from . import needs_int64

_INTERPRETED = knobs.runtime.interpret
# Map values a program scans at a time, and its warps: on the GPU 2 values per thread (at 4 and 8, ptxas spills
# 16 bytes in DARK variants on sm_90; tests/pose_gpu_static.py).
MAX_BLOCK = 4096 if _INTERPRETED else 512
NUM_WARPS = 8
LOG_FLOOR = tl.constexpr(1e-10)  # the reference's clamp before the log
NO_CLAMP_FLOOR = tl.constexpr(2e-10)  # csrc/pose_math.h's kDarkNoClampFloor


@triton.jit
def _merged(hm, fl, y, x, w, mask, FLIPPED: tl.constexpr, SHIFT: tl.constexpr):
    """The merged map at (y, x) in fp32 (0 where masked off)."""
    v = tl.load(hm + y * w + x, mask=mask, other=0.0).to(tl.float32)
    if FLIPPED:
        if SHIFT:
            col = tl.where(x == 0, w - 1, w - x)
        else:
            col = w - 1 - x
        v = (v + tl.load(fl + y * w + col, mask=mask, other=0.0).to(tl.float32)) / 2
    return v


@triton.jit
def _stencil(s):
    """(dy, dx) of stencil point s, in csrc/pose_math.h's order (centre, x+-1, y+-1, x+-2, y+-2, diagonals)."""
    dy = tl.where((s == 3) | (s == 9) | (s == 11), 1, 0) - tl.where((s == 4) | (s == 10) | (s == 12), 1, 0) + \
        tl.where(s == 7, 2, 0) - tl.where(s == 8, 2, 0)
    dx = tl.where((s == 1) | (s == 9) | (s == 10), 1, 0) - tl.where((s == 2) | (s == 11) | (s == 12), 1, 0) + \
        tl.where(s == 5, 2, 0) - tl.where(s == 6, 2, 0)
    return dy, dx


@triton.jit
def _pick(values, s, t):
    return tl.sum(tl.where(s == t, values, 0.0), axis=0)


@triton.jit
def _heatmap_decode_kernel(
    out_ptr,      # [K, J, 3] float32
    hm_ptr,       # [K, J, h, w] fp32/fp16/bf16, dense
    fl_ptr,       # [K, J, h, w] like hm (the flipped crops; aliases hm_ptr unless FLIPPED)
    index_ptr,    # [J] int64 flip_index (unread unless FLIPPED)
    centers_ptr,  # [K, 2] float32
    scales_ptr,   # [K, 2] float32
    taps_ptr,     # [blur_kernel] float32 DARK's normalised Gaussian (unread unless DARK)
    J, h, w,
    FLIPPED: tl.constexpr,
    SHIFT: tl.constexpr,
    DARK: tl.constexpr,
    INT64: tl.constexpr,  # some offset can reach 2**31: index in int64
    BLOCK: tl.constexpr,  # map values per scan step
    CHUNKS: tl.constexpr,  # scan steps: cdiv(h * w, BLOCK)
    KSIZE: tl.constexpr,  # DARK's blur_kernel
    TAPS: tl.constexpr,   # KSIZE rounded up to a power of two
):
    kj = tl.program_id(0)
    if INT64:
        kj = kj.to(tl.int64)
    k = kj // J
    j = kj % J
    hw = h * w
    hm = hm_ptr + kj * hw
    fl = fl_ptr
    if FLIPPED:
        fl = fl_ptr + (k * J + tl.load(index_ptr + j)) * hw

    lanes = tl.arange(0, BLOCK)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_i = tl.where(lanes < hw, lanes, hw)  # a lane that never sees a larger value keeps its first position
    nan = tl.zeros([BLOCK], tl.int32)
    for chunk in range(0, CHUNKS):  # constexpr trip counts: the interpreter cannot loop to a run-time bound
        i = chunk * BLOCK + lanes
        mask = i < hw
        v = _merged(hm, fl, i // w, i % w, w, mask, FLIPPED, SHIFT)
        v = tl.where(mask, v, float("-inf"))
        better = v > best
        best = tl.where(better, v, best)
        best_i = tl.where(better, i, best_i)
        nan = nan | (v != v).to(tl.int32)
    score = tl.max(best, axis=0)
    index = tl.min(tl.where(best == score, best_i, hw), axis=0)
    px = index % w
    py = index // w
    positive = score > 0
    x = tl.where(positive, px.to(tl.float32), 0.0)
    y = tl.where(positive, py.to(tl.float32), 0.0)
    if DARK:
        inside = positive & (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
        r: tl.constexpr = (KSIZE - 1) // 2
        s = tl.arange(0, 16)
        sdy, sdx = _stencil(s)
        b_col = tl.arange(0, TAPS)
        gb = tl.load(taps_ptr + b_col, mask=b_col < KSIZE, other=0.0)
        ys = (py + sdy)[:, None]
        xs = (px + sdx)[:, None] + b_col[None, :] - r  # [16, TAPS] tap columns of each stencil point
        col_ok = (xs >= 0) & (xs < w) & (b_col[None, :] < KSIZE) & (s[:, None] < 13)
        column = tl.zeros([16, TAPS], tl.float32)
        if inside:
            for a in range(0, KSIZE):
                yy = ys + a - r
                ok = col_ok & (yy >= 0) & (yy < h)
                column += tl.load(taps_ptr + a) * _merged(hm, fl, yy, xs, w, ok, FLIPPED, SHIFT)
        blurred = tl.sum(gb[None, :] * column, axis=1)  # [16]
        lowest = tl.min(tl.where(s < 13, blurred, float("inf")), axis=0)
        clamp_free = lowest >= NO_CLAMP_FLOOR
        # max(B) over the whole map, only where the clamp may act.
        blur_max = tl.full([BLOCK], float("-inf"), tl.float32)
        if inside & (lowest < NO_CLAMP_FLOOR):
            for chunk in range(0, CHUNKS):
                i = chunk * BLOCK + lanes
                mask = i < hw
                iy = i // w
                ix = i % w
                acc = tl.zeros([BLOCK], tl.float32)
                for b in range(0, KSIZE):
                    xx = ix + b - r
                    col = tl.zeros([BLOCK], tl.float32)
                    for a in range(0, KSIZE):
                        yy = iy + a - r
                        ok = mask & (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
                        col += tl.load(taps_ptr + a) * _merged(hm, fl, yy, xx, w, ok, FLIPPED, SHIFT)
                    acc += tl.load(taps_ptr + b) * col
                blur_max = tl.maximum(blur_max, tl.where(mask, acc, float("-inf")))
        rescaled = blurred * (score / tl.max(blur_max, axis=0))
        clamped = tl.where(rescaled < LOG_FLOOR, LOG_FLOOR, rescaled)  # NaN stays NaN, as torch.clamp_min
        # (A scalar from a reduction and a vector combine through tl.where: the interpreter cannot '&' them.)
        L = tl.where(clamp_free, tl.log(tl.where(tl.where(clamp_free, s < 13, False), blurred, 1.0)), tl.log(clamped))
        gx = 0.5 * (_pick(L, s, 1) - _pick(L, s, 2))
        gy = 0.5 * (_pick(L, s, 3) - _pick(L, s, 4))
        centre = _pick(L, s, 0)
        dxx = 0.25 * (_pick(L, s, 5) - 2 * centre + _pick(L, s, 6))
        dyy = 0.25 * (_pick(L, s, 7) - 2 * centre + _pick(L, s, 8))
        dxy = 0.25 * (_pick(L, s, 9) - _pick(L, s, 10) - _pick(L, s, 11) + _pick(L, s, 12))
        det = dxx * dyy - dxy * dxy
        step = inside & (det != 0)
        safe = tl.where(step, det, 1.0)
        x = x - tl.where(step, (dyy * gx - dxy * gy) / safe, 0.0)
        y = y - tl.where(step, (dxx * gy - dxy * gx) / safe, 0.0)
    else:
        inside = positive & (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
        # Neighbours (py, px +- 1), (py +- 1, px), read only where the step applies.
        n = tl.arange(0, 4)
        ny = py + tl.where(n == 2, 1, 0) - tl.where(n == 3, 1, 0)
        nx = px + tl.where(n == 0, 1, 0) - tl.where(n == 1, 1, 0)
        near = _merged(hm, fl, ny, nx, w, tl.where(inside, n < 4, False), FLIPPED, SHIFT)
        dx = _pick(near, n, 0) - _pick(near, n, 1)
        dy = _pick(near, n, 2) - _pick(near, n, 3)
        sign_x = tl.where(dx > 0, 1.0, tl.where(dx < 0, -1.0, dx))
        sign_y = tl.where(dy > 0, 1.0, tl.where(dy < 0, -1.0, dy))
        x = x + tl.where(inside, 0.25 * sign_x, 0.0)
        y = y + tl.where(inside, 0.25 * sign_y, 0.0)

    fw = w.to(tl.float32)
    fh = h.to(tl.float32)
    out_x = tl.load(centers_ptr + k * 2) + (x - fw * 0.5) * (tl.load(scales_ptr + k * 2) / fw)
    out_y = tl.load(centers_ptr + k * 2 + 1) + (y - fh * 0.5) * (tl.load(scales_ptr + k * 2 + 1) / fh)
    has_nan = tl.max(nan, axis=0) > 0
    o = out_ptr + kj * 3
    tl.store(o, tl.where(has_nan, float("nan"), out_x))
    tl.store(o + 1, tl.where(has_nan, float("nan"), out_y))
    tl.store(o + 2, tl.where(has_nan, float("nan"), score))


@functools.lru_cache(maxsize=16)
def _taps(blur_kernel: int, device: torch.device) -> torch.Tensor:
    """DARK's Gaussian on ``device``, kept per size: a fresh host-to-device copy per call would wait."""
    return gaussian_taps(blur_kernel).to(device)


def heatmap_decode(heatmaps: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor, method: str,
                   flipped: Optional[torch.Tensor], flip_index: Optional[torch.Tensor], shift_flipped: bool,
                   blur_kernel: int) -> torch.Tensor:
    """The op on validated inputs (hrnet_fast/ops/pose_checks.py): dense tensors on one device."""
    k, j, h, w = heatmaps.shape
    out = torch.empty((k, j, 3), dtype=torch.float32, device=heatmaps.device)
    if k * j == 0:
        return out
    dark = method == "dark"
    taps = _taps(blur_kernel, heatmaps.device) if dark else centers
    has_flipped = flipped is not None
    block = min(MAX_BLOCK, triton.next_power_of_2(h * w))
    _heatmap_decode_kernel[(k * j,)](
        out, heatmaps, flipped if has_flipped else heatmaps, flip_index if has_flipped else centers, centers,
        scales, taps, j, h, w, FLIPPED=has_flipped, SHIFT=bool(shift_flipped), DARK=dark,
        INT64=needs_int64(heatmaps), BLOCK=block, CHUNKS=triton.cdiv(h * w, block), KSIZE=blur_kernel if dark else 1,
        TAPS=triton.next_power_of_2(blur_kernel) if dark else 1, num_warps=NUM_WARPS)
    return out
