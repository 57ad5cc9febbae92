"""Heatmaps to keypoints in plain PyTorch: the flip-test merge, the ``classic`` and ``dark`` decoders, and the map
back to image pixels. The definition the fused ``heatmap_decode`` op must match; all arithmetic in float32.

- Flip test (official deep-high-resolution-net): the heatmaps of the mirrored crop are flipped back horizontally,
  their joints reordered so each left joint takes its right twin's map (``flip_index``), optionally shifted one
  pixel to the right (the official ``SHIFT_HEATMAP``: ``f[..., 1:] = f[..., :-1]``, column 0 kept), and averaged
  with the unflipped heatmaps.
- ``classic`` (official ``get_final_preds``): the argmax (first maximum in row-major order) with the peak value as
  score; a joint whose peak is <= 0 sits at (0, 0); away from the border (``1 < x < w - 1``, ``1 < y < h - 1``)
  the coordinate moves a quarter pixel toward the higher neighbour on each axis.
- ``dark`` (Zhang et al., "Distribution-Aware Coordinate Representation for Human Pose Estimation", CVPR 2020, as
  the DarkPose code decodes): the same argmax and score; the heatmap is blurred with a ``blur_kernel``-sized
  Gaussian (sigma ``0.3 * ((k - 1) / 2 - 1) + 0.8``, OpenCV's default for the size; zeros outside the map), rescaled
  to the unblurred peak, and its log (floored at 1e-10) is expanded to second order at the argmax: away from the
  border (``1 < x < w - 2``, ``1 < y < h - 2``) the coordinate moves by ``-H^-1 g`` (central differences) unless
  the Hessian is singular.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .geometry import to_image

METHODS = ("classic", "dark")


def flip_back(heatmaps: torch.Tensor, flipped: torch.Tensor, flip_index: torch.Tensor,
              shift: bool = False) -> torch.Tensor:
    """The flip-test average of ``heatmaps`` and the mirrored crops' ``flipped`` heatmaps (both [K, J, h, w])."""
    f = flipped.flip(-1)[:, flip_index.to(flipped.device)]
    if shift:
        f = torch.cat((f[..., :1], f[..., :-1]), dim=-1)
    return (heatmaps + f) * 0.5


def _at(hm: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """hm[k, j, y[k, j], x[k, j]] for [K, J, h, w] ``hm`` and [K, J] indices (clamped into the map)."""
    h, w = hm.shape[-2:]
    index = y.clamp(0, h - 1) * w + x.clamp(0, w - 1)
    return hm.flatten(2).gather(2, index.unsqueeze(-1)).squeeze(-1)


def argmax(hm: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, score) of each map's first maximum, x and y int64 [K, J] set to 0 where the score is <= 0."""
    w = hm.shape[-1]
    score, index = hm.flatten(2).max(dim=2)
    positive = score > 0
    x = torch.where(positive, index % w, 0)
    y = torch.where(positive, index // w, 0)
    return x, y, score


def classic(hm: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(coords [K, J, 2] in map pixels, scores [K, J]): argmax plus the quarter-pixel step."""
    h, w = hm.shape[-2:]
    x, y, score = argmax(hm)
    inner = (x > 1) & (x < w - 1) & (y > 1) & (y < h - 1)
    step_x = torch.sign(_at(hm, y, x + 1) - _at(hm, y, x - 1)) * 0.25
    step_y = torch.sign(_at(hm, y + 1, x) - _at(hm, y - 1, x)) * 0.25
    coords = torch.stack((x + torch.where(inner, step_x, 0.0), y + torch.where(inner, step_y, 0.0)), dim=-1)
    return coords, score


def gaussian_kernel(size: int) -> torch.Tensor:
    """The normalised 1-D Gaussian of ``size`` taps with OpenCV's default sigma for that size."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-t * t / (2 * sigma * sigma))
    return g / g.sum()


def blur(hm: torch.Tensor, size: int) -> torch.Tensor:
    """Each map of [K, J, h, w] ``hm`` blurred (zeros outside) and rescaled so its maximum is the unblurred one."""
    K, J, h, w = hm.shape
    g = gaussian_kernel(size).to(hm.device)
    r = (size - 1) // 2
    flat = hm.reshape(K * J, 1, h, w)
    out = F.conv2d(F.conv2d(flat, g.view(1, 1, 1, size), padding=(0, r)), g.view(1, 1, size, 1), padding=(r, 0))
    out = out.reshape(K, J, h, w)
    peak = hm.flatten(2).amax(dim=2)[..., None, None]
    return out * (peak / out.flatten(2).amax(dim=2)[..., None, None])


def dark(hm: torch.Tensor, blur_kernel: int = 11) -> Tuple[torch.Tensor, torch.Tensor]:
    """(coords [K, J, 2] in map pixels, scores [K, J]): argmax refined by the Taylor step on the blurred
    log-heatmap."""
    h, w = hm.shape[-2:]
    x, y, score = argmax(hm)
    f = torch.log(blur(hm, blur_kernel).clamp_min(1e-10))

    def at(dy: int, dx: int) -> torch.Tensor:
        return _at(f, y + dy, x + dx)

    center = at(0, 0)
    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = 0.25 * (at(0, 2) - 2 * center + at(0, -2))
    dyy = 0.25 * (at(2, 0) - 2 * center + at(-2, 0))
    dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    det = dxx * dyy - dxy * dxy
    refine = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2) & (det != 0)
    safe = torch.where(refine, det, 1.0)
    # -H^-1 g with H^-1 = [[dyy, -dxy], [-dxy, dxx]] / det
    off_x = -(dyy * dx - dxy * dy) / safe
    off_y = -(dxx * dy - dxy * dx) / safe
    coords = torch.stack((x + torch.where(refine, off_x, 0.0), y + torch.where(refine, off_y, 0.0)), dim=-1)
    return coords, score


def decode(heatmaps: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor, method: str = "classic", *,
           flipped: Optional[torch.Tensor] = None, flip_index: Optional[torch.Tensor] = None,
           shift_flipped: bool = False, blur_kernel: int = 11) -> Tuple[torch.Tensor, torch.Tensor]:
    """(keypoints [K, J, 2] float32 in image pixels, scores [K, J]) of ``heatmaps`` [K, J, h, w] over crops with
    ``centers`` and ``scales`` [K, 2] (``box_to_center_scale``'s).

    ``method``: "classic" or "dark" (see the module docstring). ``flipped``: heatmaps of the mirrored crops, merged
    in first (``flip_index`` [J] required with it; ``shift_flipped``: the official one-pixel shift)."""
    hm = check_heatmaps(heatmaps, centers, scales, method, flipped, flip_index, blur_kernel)
    if flipped is not None:
        hm = flip_back(hm, flipped.to(torch.float32), flip_index, shift_flipped)
    coords, scores = classic(hm) if method == "classic" else dark(hm, blur_kernel)
    centers = centers.to(device=hm.device, dtype=torch.float32)
    scales = scales.to(device=hm.device, dtype=torch.float32)
    return to_image(coords, centers, scales, hm.shape[-2:]), scores


def check_heatmaps(heatmaps: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor, method: str,
                   flipped: Optional[torch.Tensor], flip_index: Optional[torch.Tensor],
                   blur_kernel: int) -> torch.Tensor:
    """``heatmaps`` in float32 after checking every argument of ``decode``; ValueError naming the problem."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(heatmaps, torch.Tensor) or heatmaps.dim() != 4 or not heatmaps.is_floating_point():
        raise ValueError("heatmaps must be a floating-point [K, J, h, w] tensor, got "
                         + (f"shape {tuple(heatmaps.shape)}, {heatmaps.dtype}" if isinstance(heatmaps, torch.Tensor)
                            else type(heatmaps).__name__))
    K, J = heatmaps.shape[:2]
    if heatmaps.shape[2] < 1 or heatmaps.shape[3] < 1:
        raise ValueError(f"heatmaps are empty: shape {tuple(heatmaps.shape)}")
    for name, t in (("centers", centers), ("scales", scales)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (K, 2):
            raise ValueError(f"{name} must be a [K, 2] tensor with K = {K} (one per heatmap set), got "
                             + (f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__))
    if flipped is not None:
        if not isinstance(flipped, torch.Tensor) or flipped.shape != heatmaps.shape:
            raise ValueError(f"flipped heatmaps must have the heatmaps' shape {tuple(heatmaps.shape)}, got "
                             + (f"{tuple(flipped.shape)}" if isinstance(flipped, torch.Tensor)
                                else type(flipped).__name__))
        if flip_index is None or tuple(flip_index.shape) != (J,):
            raise ValueError(f"flipped heatmaps need flip_index, an int64 [{J}] tensor (joint j's mirror joint)")
    if method == "dark" and (blur_kernel < 1 or blur_kernel % 2 == 0):
        raise ValueError(f"blur_kernel must be a positive odd size, got {blur_kernel}")
    return heatmaps.to(torch.float32)
