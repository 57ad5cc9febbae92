"""Pure-PyTorch references of the two pose ops: the definition of correct for every backend.

``crop_normalize_reference``: affine crops of one uint8 HWC image, bilinear with a constant-zero border,
normalised per channel. ``heatmap_decode_reference``: flip merge, per-joint peak, classic (quarter offset) or
DARK (Taylor expansion of the log of the blurred map) refinement, back to image pixels.

Both compute in fp32 (in fp64 when handed fp64 tensors: the tests' truth), vectorised over boxes and joints. They
take validated inputs (``pose_checks.py``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

# DARK clamps the rescaled blurred map here before its log (DarkPose's official decoding).
LOG_FLOOR = 1e-10


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def crop_normalize_reference(image: torch.Tensor, theta: torch.Tensor, out_h: int, out_w: int,
                             mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32,
                             channels_last: bool = False) -> torch.Tensor:
    """[K, 3, out_h, out_w] crops of ``image`` (uint8 [H, W, 3]) through the inverse maps ``theta`` [K, 2, 3].

    Output pixel (x, y) (column, row) samples the input at x_in = (t00 x + t01 y) + t02, y_in = (t10 x + t11 y) + t12
    (pixel [r, c] sits at x = c, y = r). Bilinear from the four neighbours, blended as
    v = (1 - fy) top + fy bottom with top/bottom = (1 - fx) left + fx right; a tap outside the image contributes
    nothing (a constant-zero border). out = (v / 255 - mean[c]) / std[c], in ``dtype``, NCHW or channels_last.
    """
    ct = _compute_dtype(theta)
    device = theta.device
    k = theta.shape[0]
    height, width = image.shape[0], image.shape[1]
    t = theta.to(ct).reshape(k, 6, 1, 1)
    ys = torch.arange(out_h, dtype=ct, device=device).view(1, out_h, 1)
    xs = torch.arange(out_w, dtype=ct, device=device).view(1, 1, out_w)
    x_in = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]  # [K, out_h, out_w]
    y_in = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    x0, y0 = torch.floor(x_in), torch.floor(y_in)
    fx, fy = x_in - x0, y_in - y0
    pixels = image.reshape(height * width, 3).to(ct)

    # Validity is decided on the float coordinates, so a huge or infinite one can never become a wrapped index.
    def valid(coord: torch.Tensor, size: int) -> torch.Tensor:
        return (coord >= 0) & (coord <= size - 1)

    def gather(row: torch.Tensor, col: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        index = torch.where(ok, row * width + col, torch.zeros_like(row)).long()
        return pixels[index]  # [K, out_h, out_w, 3]

    def blend(a: torch.Tensor, a_ok: torch.Tensor, b: torch.Tensor, b_ok: torch.Tensor,
              frac: torch.Tensor) -> torch.Tensor:
        # torch.where, not a multiply by a 0/1 mask: a masked tap's weight may be NaN (an infinite coordinate).
        zero = torch.zeros((), dtype=ct, device=device)
        return torch.where(a_ok, (1 - frac) * a, zero) + torch.where(b_ok, frac * b, zero)

    c0, c1 = valid(x0, width), valid(x0 + 1, width)
    r0, r1 = valid(y0, height), valid(y0 + 1, height)
    fxc, c0c, c1c = fx[..., None], c0[..., None], c1[..., None]

    def row_value(row: torch.Tensor, row_ok: torch.Tensor) -> torch.Tensor:
        left = gather(row, x0, row_ok & c0)
        right = gather(row, x0 + 1, row_ok & c1)
        return blend(left, c0c, right, c1c, fxc)

    top, bottom = row_value(y0, r0), row_value(y0 + 1, r1)
    v = blend(top, r0[..., None], bottom, r1[..., None], fy[..., None])  # [K, out_h, out_w, 3], 0..255
    mean_t = torch.tensor(list(mean), dtype=ct, device=device)
    std_t = torch.tensor(list(std), dtype=ct, device=device)
    out = ((v / 255 - mean_t) / std_t).permute(0, 3, 1, 2).to(dtype)
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def gaussian_taps(blur_kernel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DARK's 1-D Gaussian of ``blur_kernel`` (odd) taps, sigma = 0.3 ((k - 1) / 2 - 1) + 0.8 (what OpenCV derives
    from a kernel size), normalised to sum 1; computed in fp64 and rounded once to ``dtype``."""
    sigma = 0.3 * ((blur_kernel - 1) * 0.5 - 1) + 0.8
    d = torch.arange(blur_kernel, dtype=torch.float64) - (blur_kernel - 1) // 2
    g = torch.exp(-d * d / (2 * sigma * sigma))
    return (g / g.sum()).to(dtype)


def merge_flipped(heatmaps: torch.Tensor, flipped: torch.Tensor, flip_index: torch.Tensor,
                  shift_flipped: bool) -> torch.Tensor:
    """(heatmaps + f) / 2 with f the flipped crops' heatmaps flipped back, joints reordered by flip_index and, with
    shift_flipped, shifted right one pixel (column 0 kept), all in the compute dtype."""
    ct = _compute_dtype(heatmaps)
    f = flipped.to(ct).flip(-1)[:, flip_index.long()]
    if shift_flipped:
        f = torch.cat([f[..., :1], f[..., :-1]], dim=-1)
    return (heatmaps.to(ct) + f) / 2


def _blurred_log(m: torch.Tensor, score: torch.Tensor, blur_kernel: int) -> torch.Tensor:
    """DARK's log map: m blurred (zero padding), rescaled so its max is m's max ``score``, clamped, logged."""
    n, j, h, w = m.shape
    r = (blur_kernel - 1) // 2
    g = gaussian_taps(blur_kernel, m.dtype).to(m.device)
    planes = m.reshape(n * j, 1, h, w)
    b = F.conv2d(planes, g.view(1, 1, -1, 1), padding=(r, 0))
    b = F.conv2d(b, g.view(1, 1, 1, -1), padding=(0, r)).reshape(n, j, h, w)
    b = b * (score / b.amax(dim=(2, 3)))[..., None, None]
    return torch.log(torch.clamp_min(b, LOG_FLOOR))


def heatmap_decode_reference(heatmaps: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor,
                             method: str = "classic", flipped: Optional[torch.Tensor] = None,
                             flip_index: Optional[torch.Tensor] = None, shift_flipped: bool = False,
                             blur_kernel: int = 11) -> torch.Tensor:
    """[K, J, 3] (x, y, score) in image pixels from heatmaps [K, J, h, w] of crops with ``centers``/``scales``
    [K, 2] (scales: the crop's width and height in image pixels).

    The merged map m (``merge_flipped`` when ``flipped`` is given) has its first maximum (row-major) at (px, py),
    score = max. score <= 0: heatmap coordinate (0, 0). classic: +-0.25 towards the larger neighbour per axis when
    1 < px < w-1 and 1 < py < h-1. dark: with L = ``_blurred_log``, when 1 < px < w-2 and 1 < py < h-2 and
    det(H) != 0, (px, py) - H^-1 g from L's central differences. Image: cx + (x - w/2) s_w / w (and y alike).
    A map holding a NaN decodes to (NaN, NaN, NaN).
    """
    ct = _compute_dtype(heatmaps)
    m = heatmaps.to(ct) if flipped is None else merge_flipped(heatmaps, flipped, flip_index, shift_flipped)
    n, j, h, w = m.shape
    flat = m.reshape(n, j, h * w)
    index = flat.argmax(dim=-1)
    score = flat.gather(-1, index[..., None])[..., 0]
    px, py = index % w, index // w
    positive = score > 0
    x = torch.where(positive, px, 0).to(ct)
    y = torch.where(positive, py, 0).to(ct)

    def at(dy: int, dx: int, plane: torch.Tensor) -> torch.Tensor:
        """plane at (py + dy, px + dx), indices clamped into the map (callers use it only where they are inside)."""
        row = (py + dy).clamp(0, h - 1)
        col = (px + dx).clamp(0, w - 1)
        return plane.reshape(n, j, h * w).gather(-1, (row * w + col)[..., None])[..., 0]

    if method == "classic":
        inside = positive & (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
        x = x + torch.where(inside, 0.25 * torch.sign(at(0, 1, m) - at(0, -1, m)), 0)
        y = y + torch.where(inside, 0.25 * torch.sign(at(1, 0, m) - at(-1, 0, m)), 0)
    else:
        L = _blurred_log(m, score, blur_kernel)
        gx = 0.5 * (at(0, 1, L) - at(0, -1, L))
        gy = 0.5 * (at(1, 0, L) - at(-1, 0, L))
        dxx = 0.25 * (at(0, 2, L) - 2 * at(0, 0, L) + at(0, -2, L))
        dyy = 0.25 * (at(2, 0, L) - 2 * at(0, 0, L) + at(-2, 0, L))
        dxy = 0.25 * (at(1, 1, L) - at(-1, 1, L) - at(1, -1, L) + at(-1, -1, L))
        det = dxx * dyy - dxy * dxy
        inside = positive & (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2) & (det != 0)
        safe_det = torch.where(inside, det, torch.ones_like(det))
        # (x, y) - H^-1 g, with H^-1 = [[dyy, -dxy], [-dxy, dxx]] / det.
        x = x - torch.where(inside, (dyy * gx - dxy * gy) / safe_det, 0)
        y = y - torch.where(inside, (dxx * gy - dxy * gx) / safe_det, 0)

    cx, cy = centers[:, 0:1].to(ct), centers[:, 1:2].to(ct)
    sx, sy = scales[:, 0:1].to(ct) / w, scales[:, 1:2].to(ct) / h
    out = torch.stack([cx + (x - w * 0.5) * sx, cy + (y - h * 0.5) * sy, score], dim=-1)
    return torch.where(torch.isnan(score)[..., None], torch.full_like(out, float("nan")), out)
