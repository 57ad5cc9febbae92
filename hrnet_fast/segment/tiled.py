"""Full-resolution scores one band of rows at a time, for the answers that need full-resolution logits.

Two of the pipeline's answers cannot be taken from low-resolution logits exactly:

- sliding windows (mmsegmentation's ``slide_inference``): each window's logits are resized to the window's own
  size, with its own borders (a bilinear resize clamps at the edges of what it resizes), and the overlaps are
  averaged before the argmax. The sum of the windows' resized logits is not the resize of any one low-resolution
  map: at every window border the taps of one window stop where another's go on. So the average is formed at
  full resolution, but only ``tile_rows`` rows of it at a time: [N, C, tile_rows, W] fp32 instead of
  [N, C, H, W], plus the low-resolution logits of the windows that the current band overlaps (windows are run
  when the first band needs them and dropped once the bands have passed them).
- softmax averages (``flip_average="softmax"``, mmsegmentation's test-time flip) and ``probabilities()``: the
  softmax is not linear, so it is taken of full-resolution logits, again band by band.

Each band's rows are computed from the low-resolution logits with PyTorch's bilinear source indices and weights
(``F.interpolate``'s, in fp32), so a band equals the same rows of the full-resolution resize up to fp32 rounding.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch

from .windows import Window

# A band of scores, [N, C, rows, W] fp32, is kept near this size (the tensors a band needs are a few of them).
BAND_BYTES = 4 << 20


def axis_taps(in_size: int, out_size: int, align_corners: bool,
              device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of ``out_size`` output positions: the two source indices and their weights, as PyTorch's bilinear
    upsampling computes them in fp32 (source = scale * (dst + 0.5) - 0.5 clamped at 0 with scale = in / out, or
    scale * dst with scale = (in - 1) / (out - 1) where corners are aligned; the second tap is the next index
    except at the last)."""
    dst = torch.arange(out_size, dtype=torch.float32, device=device)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = (src - i0).clamp(0.0, 1.0)
    return i0, i1, 1.0 - w1, w1


def resize_rows(logits: torch.Tensor, out_h: int, out_w: int, r0: int, r1: int,
                align_corners: bool) -> torch.Tensor:
    """Rows r0:r1 of ``F.interpolate(logits, (out_h, out_w), mode="bilinear")`` in fp32, [N, C, r1 - r0, out_w],
    without the other rows: the rows' two source rows are blended first (at low width), then the columns."""
    h, w = logits.shape[-2:]
    y0, y1, wy0, wy1 = (t[r0:r1] for t in axis_taps(h, out_h, align_corners, logits.device))
    x0, x1, wx0, wx1 = axis_taps(w, out_w, align_corners, logits.device)
    src = logits.float()
    rows = src[:, :, y0, :] * wy0[:, None] + src[:, :, y1, :] * wy1[:, None]       # [N, C, rows, w]
    return rows[..., x0] * wx0 + rows[..., x1] * wx1                                 # [N, C, rows, out_w]


class WindowedScores:
    """The averaged logits of one set of windows over an image (the image's slide windows, or one window that is
    the whole image), a band of rows at a time. ``run(window)`` gives a window's low-resolution logits
    [N, C, h, w]; bands must be asked for top to bottom."""

    def __init__(self, windows: Sequence[Window], run: Callable[[Window], torch.Tensor], align_corners: bool,
                 device: torch.device):
        self.windows = list(windows)
        self.device = device
        self.run = run
        self.align_corners = align_corners
        self.logits: Dict[int, torch.Tensor] = {}

    def band(self, r0: int, r1: int, shape: Tuple[int, int, int]) -> torch.Tensor:
        """Rows r0:r1 of the windows' resized logits summed and divided by how many windows cover each pixel:
        fp32 [N, C, r1 - r0, W] for ``shape`` (N, C, W)."""
        n, c, width = shape
        for k in [k for k, win in enumerate(self.windows) if win.y2 <= r0 and k in self.logits]:
            del self.logits[k]  # every later band lies below this window
        total = torch.zeros(n, c, r1 - r0, width, dtype=torch.float32, device=self.device)
        count = torch.zeros(r1 - r0, width, dtype=torch.float32, device=total.device)
        for k, win in enumerate(self.windows):
            if win.y2 <= r0 or win.y1 >= r1:
                continue
            if k not in self.logits:
                self.logits[k] = self.run(win)
            a, b = max(win.y1, r0), min(win.y2, r1)
            total[:, :, a - r0:b - r0, win.x1:win.x2] += resize_rows(
                self.logits[k], win.y2 - win.y1, win.x2 - win.x1, a - win.y1, b - win.y1, self.align_corners)
            count[a - r0:b - r0, win.x1:win.x2] += 1
        return total.div_(count)


def band_rows(n: int, c: int, height: int, width: int) -> int:
    """Rows per band so that an fp32 [n, c, rows, width] band is about ``BAND_BYTES``."""
    return max(1, min(height, BAND_BYTES // max(1, n * c * width * 4)))


def merged_bands(views: List[Tuple[WindowedScores, bool]], shape: Tuple[int, int, int, int], flip_average: str):
    """Yields (r0, r1, scores) down the image: the views' bands (each a ``WindowedScores`` and whether it scored
    the mirrored image, whose band is mirrored back) merged as the pipeline merges them. ``flip_average`` "logits":
    the mean of the logits; "softmax": the mean of their softmaxes. ``shape`` is (N, C, H, W)."""
    n, c, height, width = shape
    rows = band_rows(n, c, height, width)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        parts = []
        for view, mirrored in views:
            part = view.band(r0, r1, (n, c, width))
            if flip_average == "softmax" and len(views) > 1:
                part = part.softmax(1)
            parts.append(part.flip(-1) if mirrored else part)
        yield r0, r1, parts[0] if len(parts) == 1 else (parts[0] + parts[1]) * 0.5
