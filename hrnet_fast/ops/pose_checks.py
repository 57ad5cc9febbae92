"""Input validation of the pose ops (``crop_normalize``, ``heatmap_decode``): a ValueError naming the argument and
the problem before any kernel runs. Returns the inputs as every backend takes them (dense, on one device)."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .checks import FLOAT_DTYPES

METHODS = ("classic", "dark")
MAX_BLUR_KERNEL = 255  # csrc/pose_ops.h's kMaxBlurKernel


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _finite(name: str, t: torch.Tensor) -> None:
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or infinite values")


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be a bool, got {type(v).__name__}")
    return v


def _three_floats(name: str, values) -> List[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of 3 floats, got {values!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be 3 finite floats (one per RGB channel), got {values!r}")
    return out


def _same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; all inputs must be on one device")


def check_crop_normalize(image, theta, out_h, out_w, mean, std, dtype, channels_last
                         ) -> Tuple[torch.Tensor, torch.Tensor, int, int, List[float], List[float]]:
    """(image, theta, out_h, out_w, mean, std) validated; image and theta made contiguous."""
    image, theta = _tensor("image", image), _tensor("theta", theta)
    if image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 (0..255 RGB), got dtype {image.dtype}")
    if image.dim() != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an [H, W, 3] (HWC, RGB) tensor, got shape {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {tuple(image.shape)}")
    if theta.dim() != 3 or tuple(theta.shape[1:]) != (2, 3):
        raise ValueError(f"theta must be a [K, 2, 3] tensor of affine maps, got shape {tuple(theta.shape)}")
    if theta.dtype != torch.float32:
        raise ValueError(f"theta must be float32, got dtype {theta.dtype}")
    _same_device("theta", theta, "image", image)
    _finite("theta", theta)
    out_h, out_w = _positive_int("out_h", out_h), _positive_int("out_w", out_w)
    mean, std = _three_floats("mean", mean), _three_floats("std", std)
    if any(s == 0 for s in std):
        raise ValueError(f"std must not hold a zero, got {std}")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
    _bool("channels_last", channels_last)
    return image.contiguous(), theta.contiguous(), out_h, out_w, mean, std


def _check_pairs(name: str, t, k: int, heatmaps: torch.Tensor) -> torch.Tensor:
    t = _tensor(name, t)
    if tuple(t.shape) != (k, 2):
        raise ValueError(f"{name} must have shape ({k}, 2) (one (x, y) per heatmap set), got {tuple(t.shape)}")
    if t.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got dtype {t.dtype}")
    _same_device(name, t, "heatmaps", heatmaps)
    _finite(name, t)
    return t.contiguous()


def _check_flip_index(flip_index, j: int, device: torch.device) -> torch.Tensor:
    """flip_index as an int64 [J] tensor on ``device``: a permutation of the joints that is its own inverse."""
    if flip_index is None:
        raise ValueError("flip_index is required with flipped: the joint each flipped joint becomes")
    index = torch.as_tensor(flip_index)
    if index.numel() == 0:  # an empty list has no integer dtype of its own
        index = index.long()
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise ValueError(f"flip_index must hold integers, got dtype {index.dtype}")
    if index.dim() != 1 or index.shape[0] != j:
        raise ValueError(f"flip_index must have one entry per joint ({j}), got shape {tuple(index.shape)}")
    values = index.cpu().long()
    if j and (values.min() < 0 or values.max() >= j):
        raise ValueError(f"flip_index entries must lie in 0..{j - 1}, got {values.tolist()}")
    if not torch.equal(values[values], torch.arange(j)):
        raise ValueError(f"flip_index must be its own inverse (pairs swapped, others mapped to themselves), got "
                         f"{values.tolist()}")
    return values.to(device)


def check_heatmap_decode(heatmaps, centers, scales, method, flipped, flip_index, shift_flipped, blur_kernel
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor],
                                    Optional[torch.Tensor]]:
    """(heatmaps, centers, scales, flipped, flip_index) validated and contiguous."""
    heatmaps = _tensor("heatmaps", heatmaps)
    if heatmaps.dim() != 4:
        raise ValueError(f"heatmaps must be a 4-D [K, J, h, w] tensor, got shape {tuple(heatmaps.shape)}")
    if heatmaps.dtype not in FLOAT_DTYPES:
        raise ValueError(f"heatmaps must be float32, float16 or bfloat16, got dtype {heatmaps.dtype}")
    k, j, h, w = heatmaps.shape
    if h == 0 or w == 0:
        raise ValueError(f"heatmaps have an empty spatial size {h}x{w}")
    centers = _check_pairs("centers", centers, k, heatmaps)
    scales = _check_pairs("scales", scales, k, heatmaps)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    _bool("shift_flipped", shift_flipped)
    if _positive_int("blur_kernel", blur_kernel) % 2 == 0 or blur_kernel > MAX_BLUR_KERNEL:
        raise ValueError(f"blur_kernel must be an odd size from 1 to {MAX_BLUR_KERNEL}, got {blur_kernel}")
    index = None
    if flipped is not None:
        flipped = _tensor("flipped", flipped)
        if flipped.shape != heatmaps.shape or flipped.dtype != heatmaps.dtype:
            raise ValueError(f"flipped must match heatmaps: shape {tuple(heatmaps.shape)}, dtype {heatmaps.dtype}; "
                             f"got {tuple(flipped.shape)}, {flipped.dtype}")
        _same_device("flipped", flipped, "heatmaps", heatmaps)
        index = _check_flip_index(flip_index, j, heatmaps.device)
        flipped = flipped.contiguous()
    elif flip_index is not None:
        raise ValueError("flip_index was given without flipped: pass the flipped crops' heatmaps too, or neither")
    return heatmaps.contiguous(), centers, scales, flipped, index

