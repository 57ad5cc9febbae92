"""Triton kernel for ``resize_argmax``: per output pixel, the argmax over classes of the logits bilinearly resized
to the output size (F.interpolate's fp32 taps, as csrc/bilinear.h computes them), without materialising them.

Each program covers BLOCK consecutive output pixels of the flattened [N, out_h, out_w] output. Taps are computed
once per pixel; the loop over classes reads four logits per pixel through the input's strides (any layout, no
copy), blends them in the reference's order (column blends, then rows), keeps a running maximum (first on ties,
NaN counting as the largest, as torch.argmax) and for prob an online softmax sum rescaled when the maximum moves.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

from . import needs_int64
from .multires_fuse import _linear_taps, linear_scale

BLOCK = 1024 if knobs.runtime.interpret else 256


@triton.jit
def _resize_argmax_kernel(
    logits_ptr,  # [N, C, h, w], strides sn, sc, sh, sw
    labels_ptr,  # [N, out_h, out_w] uint8 or int64, dense
    prob_ptr,  # [N, out_h, out_w] float32, dense (WITH_PROB only)
    total, h, w, out_h, out_w,  # total = N * out_h * out_w
    sn, sc, sh, sw,
    scale_h, scale_w,  # F.interpolate's fp32 source-index scales
    C: tl.constexpr,  # classes: a model has one count, so one compiled variant
    ALIGN_CORNERS: tl.constexpr,
    WITH_PROB: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    x = idx % out_w
    t = idx // out_w
    y = t % out_h
    n = t // out_h
    y0, y1, ly0, ly1 = _linear_taps(y, h, out_h, scale_h, ALIGN_CORNERS)
    x0, x1, lx0, lx1 = _linear_taps(x, w, out_w, scale_w, ALIGN_CORNERS)
    base = logits_ptr + n * sn
    o00, o01 = y0 * sh + x0 * sw, y0 * sh + x1 * sw
    o10, o11 = y1 * sh + x0 * sw, y1 * sh + x1 * sw
    # -inf and an empty sum before class 0: any first logit takes the lead (or ties a -inf one, adding 1).
    best = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    total_exp = tl.zeros([BLOCK], dtype=tl.float32)
    label = tl.zeros([BLOCK], dtype=tl.int32)
    for c in range(0, C):
        z = base + c * sc
        top = lx0 * tl.load(z + o00, mask=mask, other=0.0).to(tl.float32) + \
            lx1 * tl.load(z + o01, mask=mask, other=0.0).to(tl.float32)
        bottom = lx0 * tl.load(z + o10, mask=mask, other=0.0).to(tl.float32) + \
            lx1 * tl.load(z + o11, mask=mask, other=0.0).to(tl.float32)
        v = ly0 * top + ly1 * bottom
        take = (v > best) | ((v != v) & (best == best))
        if WITH_PROB:
            # A class tied with the maximum adds exactly 1 (also when both are -inf).
            moved = total_exp * tl.exp(best - v) + 1.0
            kept = total_exp + tl.where(v == best, 1.0, tl.exp(v - best))
            total_exp = tl.where(take, moved, kept)
        best = tl.where(take, v, best)
        label = tl.where(take, c, label)
    tl.store(labels_ptr + idx, label.to(labels_ptr.dtype.element_ty), mask=mask)
    if WITH_PROB:
        tl.store(prob_ptr + idx, 1.0 / total_exp, mask=mask)


def resize_argmax(logits: torch.Tensor, out_h: int, out_w: int, align_corners: bool, with_prob: bool,
                  out_dtype: torch.dtype):
    """Validated inputs (hrnet_fast/ops/seg_checks.py) -> (labels [N, out_h, out_w], prob or an empty [0])."""
    n, c, h, w = logits.shape
    labels = torch.empty((n, out_h, out_w), dtype=out_dtype, device=logits.device)
    prob = torch.empty((n, out_h, out_w) if with_prob else (0,), dtype=torch.float32, device=logits.device)
    total = labels.numel()
    if total:
        _resize_argmax_kernel[(triton.cdiv(total, BLOCK),)](
            logits, labels, prob if with_prob else labels, total, h, w, out_h, out_w, *logits.stride(),
            linear_scale(h, out_h, align_corners), linear_scale(w, out_w, align_corners),
            C=c, ALIGN_CORNERS=bool(align_corners), WITH_PROB=bool(with_prob), INT64=needs_int64(logits, labels),
            BLOCK=BLOCK)
    return labels, prob
