"""The segmentation pipeline's two fused ops, and their plain-PyTorch references (the definition of correct).

    x = normalize(images, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))      # uint8 HWC -> float NCHW
    labels = resize_argmax(logits, 1024, 2048, align_corners=False)                   # [N, 1024, 2048] uint8
    labels, prob = resize_argmax(logits, 1024, 2048, align_corners=False, with_prob=True)

``normalize`` reads each uint8 pixel once and writes the network input once (no float HWC copy, no permuted
copy, no per-step temporaries). ``resize_argmax`` never materialises the full-resolution logits: each output pixel
blends its four bilinear taps per class (F.interpolate's fp32 source indices and weights) and keeps a running
argmax, and for ``with_prob`` a running softmax sum. ``backend=None`` picks the fastest live backend for the
tensors' device (``hrnet_fast.ops.backend_info``); "torch" runs the references.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..ops import seg_library  # noqa: F401  registers torch.ops.hrnet_fast.seg_normalize / resize_argmax
from ..ops.backends import resolve
from ..ops.seg_checks import as_batch, check_normalize, check_resize_argmax, label_dtype, normalize_out_format

__all__ = ["normalize", "resize_argmax", "normalize_reference", "resize_argmax_reference"]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32,
              channels_last: bool = False, *, backend: Optional[str] = None) -> torch.Tensor:
    """``(images / 255 - mean[c]) / std[c]`` as a [N, 3, H, W] tensor, in one pass.

    Args:
        images: uint8 [N, H, W, 3] or [H, W, 3] (then N = 1), RGB, on any device. Other strides than dense HWC
            are copied to dense HWC first (one extra pass over the uint8 image).
        mean, std: 3 floats each, in 0..1 units (e.g. ImageNet's (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).
        dtype: float32, float16 or bfloat16 (computed in fp32, rounded once).
        channels_last: lay the output out as NHWC (still shaped [N, 3, H, W]).
    """
    mean, std = check_normalize(images, mean, std, dtype, channels_last)
    name = resolve("seg_normalize", images.device.type, backend)
    return torch.ops.hrnet_fast.seg_normalize(as_batch(images).contiguous(), mean, std, dtype, channels_last, name)


def resize_argmax(logits: torch.Tensor, out_h: int, out_w: int, align_corners: bool, with_prob: bool = False,
                  out_dtype: Optional[torch.dtype] = None, *, backend: Optional[str] = None
                  ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Per-pixel class labels of ``logits`` resized to (out_h, out_w), without making the resized logits.

    Equal to ``F.interpolate(logits.float(), size=(out_h, out_w), mode="bilinear", align_corners=align_corners)
    .argmax(1)`` (the first maximum on ties; a NaN logit counts as the maximum, as torch.argmax treats it), to fp32
    rounding: where the two best interpolated logits of a pixel are within rounding of each other, either label
    may come out. Downsizing follows the same bilinear rule (no antialias).

    Args:
        logits: [N, C, h, w] float32/float16/bfloat16, NCHW or channels_last (read in fp32).
        out_h, out_w: the output size (> 0).
        align_corners: F.interpolate's convention (the model's).
        with_prob: also return the winner's softmax probability, ``1 / sum_c exp(l_c - l_max)``, float32.
        out_dtype: the labels' dtype, torch.uint8 (C <= 256) or torch.int64; by default uint8 for C <= 256.
    Returns:
        labels [N, out_h, out_w], or (labels, prob [N, out_h, out_w]) with ``with_prob``.
    """
    out_dtype = check_resize_argmax(logits, out_h, out_w, align_corners, with_prob, out_dtype)
    name = resolve("resize_argmax", logits.device.type, backend)
    labels, prob = torch.ops.hrnet_fast.resize_argmax(logits, int(out_h), int(out_w), align_corners, with_prob,
                                                      out_dtype, name)
    return (labels, prob) if with_prob else labels


def normalize_reference(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                        dtype: torch.dtype = torch.float32, channels_last: bool = False) -> torch.Tensor:
    """``normalize`` in plain PyTorch: float32 (float64 when ``dtype`` is float64, for a truth), then cast."""
    x = as_batch(images).permute(0, 3, 1, 2)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    m = torch.tensor(mean, dtype=work, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=work, device=images.device).view(1, 3, 1, 1)
    y = ((x.to(work) / 255 - m) / s).to(dtype)
    return y.contiguous(memory_format=normalize_out_format(channels_last))


def resize_argmax_reference(logits: torch.Tensor, out_h: int, out_w: int, align_corners: bool,
                            with_prob: bool = False, out_dtype: Optional[torch.dtype] = None
                            ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """``resize_argmax`` in plain PyTorch: F.interpolate in float32 (float64 logits stay float64, for a truth),
    torch.argmax over classes, the winner's softmax probability (float32)."""
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    full = F.interpolate(logits.to(work), size=(out_h, out_w), mode="bilinear", align_corners=align_corners)
    index = full.argmax(1)
    labels = index.to(label_dtype(out_dtype, logits.shape[1]))
    if not with_prob:
        return labels
    prob = torch.softmax(full, 1).gather(1, index.unsqueeze(1)).squeeze(1).float()
    return labels, prob


def normalize_reference_op(images, mean, std, dtype, channels_last) -> torch.Tensor:
    """The torch backend of torch.ops.hrnet_fast.seg_normalize."""
    return normalize_reference(images, mean, std, dtype, channels_last)


def resize_argmax_reference_op(logits, out_h, out_w, align_corners, with_prob, out_dtype):
    """The torch backend of torch.ops.hrnet_fast.resize_argmax: (labels, prob or an empty [0])."""
    if with_prob:
        return resize_argmax_reference(logits, out_h, out_w, align_corners, True, out_dtype)
    labels = resize_argmax_reference(logits, out_h, out_w, align_corners, False, out_dtype)
    return labels, logits.new_empty((0,), dtype=torch.float32)
