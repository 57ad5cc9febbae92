"""The fused pose ops, each with four backends behind one contract (as ``hrnet_fast.ops``):

    crops = crop_normalize(image, theta, 256, 192, mean, std, dtype=torch.float16, channels_last=True)
    kpts = heatmap_decode(heatmaps, centers, scales, "dark", flipped=hm_flip, flip_index=pairs, shift_flipped=True)

``crop_normalize``: every box's affine crop of one uint8 HWC image, bilinear with a zero border, normalised, in one
pass (each output pixel reads its 4 taps x 3 channels once). ``heatmap_decode``: flip merge, peak, classic or DARK
refinement and the map back to image pixels in one pass per heatmap; only K x J x 3 numbers leave the op.

Backends: ``torch`` (the references below, always live), ``cpu`` (the compiled extension, parallel over rows /
heatmaps), ``triton`` and ``cuda`` (GPU). ``backend=None`` picks the fastest live one for the inputs' device,
warning once when it falls back. The definitions are the references' docstrings
(``hrnet_fast/ops/pose_reference.py``); inputs are checked first (``hrnet_fast/ops/pose_checks.py``): a ValueError
names the argument and the problem before any kernel runs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..ops import pose_library  # noqa: F401  registers torch.ops.hrnet_fast.{crop_normalize,heatmap_decode}
from ..ops.backends import resolve
from ..ops.pose_checks import check_crop_normalize, check_heatmap_decode
from ..ops.pose_reference import crop_normalize_reference, heatmap_decode_reference

__all__ = ["crop_normalize", "heatmap_decode", "crop_normalize_reference", "heatmap_decode_reference"]


def crop_normalize(image: torch.Tensor, theta: torch.Tensor, out_h: int, out_w: int, mean: Sequence[float],
                   std: Sequence[float], dtype: torch.dtype = torch.float32, channels_last: bool = False, *,
                   backend: Optional[str] = None) -> torch.Tensor:
    """[K, 3, out_h, out_w] normalised crops of ``image`` (uint8 [H, W, 3], RGB) through ``theta`` (float32
    [K, 2, 3], output pixel (x, y, 1) -> input pixel (x, y); integer coordinates are pixel centres).

    Bilinear in fp32 from the 4 neighbours, a tap outside the image contributing 0; out = (v / 255 - mean[c]) /
    std[c] (mean and std in 0..1 units), in ``dtype`` (fp32/fp16/bf16), NCHW or channels_last. K = 0 gives an
    empty tensor. A non-contiguous image or theta is copied to a contiguous one first.
    """
    image, theta, out_h, out_w, mean, std = check_crop_normalize(image, theta, out_h, out_w, mean, std, dtype,
                                                                 channels_last)
    name = resolve("crop_normalize", image.device.type, backend)
    return torch.ops.hrnet_fast.crop_normalize(image, theta, out_h, out_w, mean, std, dtype, channels_last, name)


def heatmap_decode(heatmaps: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor, method: str = "classic",
                   flipped: Optional[torch.Tensor] = None, flip_index=None, shift_flipped: bool = False,
                   blur_kernel: int = 11, *, backend: Optional[str] = None) -> torch.Tensor:
    """[K, J, 3] float32 (x, y, score) in image pixels from ``heatmaps`` [K, J, h, w] (fp32/fp16/bf16, computed in
    fp32) of crops centred at ``centers`` [K, 2] spanning ``scales`` [K, 2] image pixels (width, height).

    ``flipped`` (optional, like heatmaps): the horizontally mirrored crops' heatmaps, flipped back, joints reordered
    by ``flip_index`` (int [J], its own inverse; a tensor or a sequence), shifted right one pixel with
    ``shift_flipped``, and averaged in. ``method``: "classic" (quarter offset) or "dark" (``blur_kernel``, odd).
    A heatmap holding a NaN decodes to (NaN, NaN, NaN).
    """
    heatmaps, centers, scales, flipped, index = check_heatmap_decode(heatmaps, centers, scales, method, flipped,
                                                                     flip_index, shift_flipped, blur_kernel)
    name = resolve("heatmap_decode", heatmaps.device.type, backend)
    return torch.ops.hrnet_fast.heatmap_decode(heatmaps, centers, scales, method, flipped, index, shift_flipped,
                                               blur_kernel, name)
