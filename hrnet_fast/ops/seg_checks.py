"""Input validation of the segmentation ops (``hrnet_fast.segment.ops.normalize`` / ``resize_argmax``): a
ValueError naming the argument and the problem, before any kernel runs. The C++ ops check the same things again
at their boundary (csrc/seg_ops.cpp) for direct ``torch.ops.hrnet_fast_C`` callers."""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple

import torch

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOGIT_DTYPES = OUT_DTYPES
LABEL_DTYPES = (torch.uint8, torch.int64)
UINT8_CLASSES = 256  # labels 0..255


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {type(value).__name__}")


def _three_floats(name: str, values) -> List[float]:
    """``values`` as 3 Python floats: a sequence (or a 1-D tensor) of 3 finite real numbers."""
    if isinstance(values, torch.Tensor):
        values = values.tolist() if values.dim() == 1 else None
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 3:
        got = f"{len(values)} values" if isinstance(values, Sequence) else type(values).__name__
        raise ValueError(f"{name} must be a sequence of 3 floats (one per RGB channel), got {got}")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must hold 3 real numbers, got {list(values)!r}")
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def check_normalize(images, mean, std, dtype, channels_last) -> Tuple[List[float], List[float]]:
    """Checks a ``normalize`` call; returns mean and std as lists of 3 floats."""
    _check_tensor("images", images)
    if images.dim() not in (3, 4):
        raise ValueError(f"images must be [N, H, W, 3] or [H, W, 3], got shape {tuple(images.shape)}")
    if images.shape[-1] != 3:
        raise ValueError(f"images must have 3 channels in the last dimension (HWC, RGB), got shape "
                         f"{tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0..255), got dtype {images.dtype}")
    mean, std = _three_floats("mean", mean), _three_floats("std", std)
    if any(s == 0 for s in std):
        raise ValueError(f"std must not be 0, got {std}")
    if any(abs(v) > 1 for v in mean + std):
        raise ValueError(f"mean and std are in 0..1 units (the image is divided by 255 first), got mean={mean}, "
                         f"std={std}; for 0..255 values divide them by 255")
    if dtype not in OUT_DTYPES:
        raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
    _check_bool("channels_last", channels_last)
    return mean, std


def _check_size(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def check_resize_argmax(logits, out_h, out_w, align_corners, with_prob, out_dtype) -> torch.dtype:
    """Checks a ``resize_argmax`` call; returns the labels' dtype (uint8 for up to 256 classes, else int64,
    unless ``out_dtype`` says)."""
    _check_tensor("logits", logits)
    if logits.dim() != 4:
        raise ValueError(f"logits must be a 4-D [N, C, h, w] tensor, got shape {tuple(logits.shape)}")
    if logits.dtype not in LOGIT_DTYPES:
        raise ValueError(f"logits must be float32, float16 or bfloat16, got dtype {logits.dtype}")
    n, c, h, w = logits.shape
    if c == 0:
        raise ValueError(f"logits must have at least one class (C > 0), got shape {tuple(logits.shape)}")
    if h == 0 or w == 0:
        raise ValueError(f"logits has an empty spatial size {h}x{w}; nothing to interpolate from")
    _check_size("out_h", out_h)
    _check_size("out_w", out_w)
    _check_bool("align_corners", align_corners)
    _check_bool("with_prob", with_prob)
    if out_dtype is not None and out_dtype not in LABEL_DTYPES:
        raise ValueError(f"out_dtype must be torch.uint8, torch.int64 or None, got {out_dtype}")
    if out_dtype == torch.uint8 and c > UINT8_CLASSES:
        raise ValueError(f"out_dtype=torch.uint8 holds labels 0..255, but logits has {c} classes; use torch.int64")
    return label_dtype(out_dtype, c)


def label_shape(logits_shape: Sequence[int], out_h: int, out_w: int) -> Tuple[int, int, int]:
    return (logits_shape[0], out_h, out_w)


def prob_shape(logits_shape: Sequence[int], out_h: int, out_w: int, with_prob: bool) -> Tuple[int, ...]:
    """The op always returns a prob tensor: [N, out_h, out_w] with with_prob, else an empty [0]."""
    return label_shape(logits_shape, out_h, out_w) if with_prob else (0,)


def normalize_out_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def as_batch(images: torch.Tensor) -> torch.Tensor:
    """[H, W, 3] -> [1, H, W, 3]; [N, H, W, 3] as it is."""
    return images.unsqueeze(0) if images.dim() == 3 else images


def label_dtype(out_dtype: Optional[torch.dtype], classes: int) -> torch.dtype:
    """``out_dtype``, or by default uint8 for up to 256 classes and int64 beyond."""
    return out_dtype if out_dtype is not None else (torch.uint8 if classes <= UINT8_CLASSES else torch.int64)
