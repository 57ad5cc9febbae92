"""Sliding-window geometry, as mmsegmentation's ``slide_inference`` lays its windows out.

For an image of H x W, a crop of (crop_h, crop_w) and a stride of (stride_h, stride_w):

    h_grids = max(H - crop_h + stride_h - 1, 0) // stride_h + 1          (w_grids likewise)
    window (i, j): y1 = i * stride_h, y2 = min(y1 + crop_h, H), y1 = max(y2 - crop_h, 0)   (x likewise)

Windows come in row-major order (i, then j). The last row and column of windows are pulled back inside the image,
so every window is a full crop when the crop fits the image (which ``check_slide`` requires).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

Size = Union[int, Sequence[int]]


class Window(NamedTuple):
    """Rows y1:y2 and columns x1:x2 of the image; ``row`` is the window's grid row i."""
    y1: int
    y2: int
    x1: int
    x2: int
    row: int


def as_pair(value: Optional[Size], name: str) -> Optional[Tuple[int, int]]:
    """(h, w) from an int or a pair of ints, each positive; None stays None."""
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints (height, width); got {value!r}")
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive; got {value!r}")
    return pair


def check_slide(height: int, width: int, crop: Tuple[int, int], stride: Tuple[int, int]) -> None:
    """ValueError unless the crop fits the image and the stride the crop (a stride above the crop would leave
    pixels that no window covers)."""
    if crop[0] > height or crop[1] > width:
        raise ValueError(f"crop_size {crop[0]}x{crop[1]} is larger than the {height}x{width} image: use a crop no "
                         f"larger than the image (or mode='whole')")
    if stride[0] > crop[0] or stride[1] > crop[1]:
        raise ValueError(f"stride {stride[0]}x{stride[1]} is larger than crop_size {crop[0]}x{crop[1]}: pixels "
                         f"between windows would be covered by none")


def grid_count(size: int, crop: int, stride: int) -> int:
    return max(size - crop + stride - 1, 0) // stride + 1


def _spans(size: int, crop: int, stride: int) -> List[Tuple[int, int]]:
    spans = []
    for i in range(grid_count(size, crop, stride)):
        end = min(i * stride + crop, size)
        spans.append((max(end - crop, 0), end))
    return spans


def slide_windows(height: int, width: int, crop: Tuple[int, int], stride: Tuple[int, int]) -> List[Window]:
    """The windows of ``slide_inference`` over a height x width image, row-major."""
    check_slide(height, width, crop, stride)
    return [Window(y1, y2, x1, x2, i)
            for i, (y1, y2) in enumerate(_spans(height, crop[0], stride[0]))
            for x1, x2 in _spans(width, crop[1], stride[1])]
