"""Top-down pose geometry: person boxes to crop centers and sizes, and the affine maps between crop and image.

Conventions (the official deep-high-resolution-net ``_xywh2cs`` / ``get_affine_transform`` with no rotation, and
mmpose's ``bbox_xyxy2cs`` with its aspect-ratio fix):

- a box ``(x1, y1, x2, y2)`` has center ``((x1 + x2) / 2, (y1 + y2) / 2)`` and size ``(x2 - x1, y2 - y1)``; the
  shorter side (relative to the input's aspect ratio ``input_w / input_h``) is grown until the box has that
  aspect ratio, then both sides are multiplied by ``padding`` (1.25: some context around the person). The crop
  size ("scale") is in pixels, width then height.
- a crop of ``out_w x out_h`` pixels maps the crop center to the image center point with a per-axis scale of
  crop size / output size: ``x_in = cx + (x_out - out_w / 2) * s_w / out_w`` (``y`` likewise), with integer
  coordinates at pixel centers and no half-pixel correction, as the official code does. Heatmaps go back to the
  image through the same map with the heatmap's size in place of the crop's.
"""
from __future__ import annotations

from typing import Tuple

import torch


def check_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """``boxes`` as a float32 [K, 4] xyxy tensor; ValueError naming the problem for another shape, NaN or
    infinite coordinates, or a box with x2 < x1 or y2 < y1."""
    if not isinstance(boxes, torch.Tensor):
        boxes = torch.as_tensor(boxes)
    if boxes.numel() == 0 and boxes.dim() <= 2:
        boxes = boxes.reshape(0, 4)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be a [K, 4] tensor of (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    if boxes.is_complex() or boxes.dtype == torch.bool:
        raise TypeError(f"boxes must hold real numbers, got {boxes.dtype}")
    boxes = boxes.to(torch.float32)
    bad = ~torch.isfinite(boxes).all(dim=1)
    if bool(bad.any()):
        k = int(bad.nonzero()[0])
        raise ValueError(f"box {k} has a NaN or infinite coordinate: {boxes[k].tolist()}")
    flipped = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bool(flipped.any()):
        k = int(flipped.nonzero()[0])
        raise ValueError(f"box {k} has x2 < x1 or y2 < y1: {boxes[k].tolist()} (boxes are (x1, y1, x2, y2))")
    return boxes


def box_to_center_scale(boxes: torch.Tensor, aspect_ratio: float,
                        padding: float = 1.25) -> Tuple[torch.Tensor, torch.Tensor]:
    """(centers [K, 2], scales [K, 2]) of xyxy ``boxes`` [K, 4], float32 on the boxes' device.

    ``aspect_ratio``: the network input's width / height (192 / 256 for a 256x192 pose model). Scales are the crop's
    width and height in pixels: the box grown along its short side to ``aspect_ratio``, times ``padding``."""
    if not aspect_ratio > 0 or not padding > 0:
        raise ValueError(f"aspect_ratio and padding must be positive, got {aspect_ratio} and {padding}")
    boxes = check_boxes(boxes)
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    centers = torch.stack(((x1 + x2) * 0.5, (y1 + y2) * 0.5), dim=1)
    w, h = x2 - x1, y2 - y1
    # Grow whichever side is short for the aspect ratio; a box already at it keeps both.
    wider = w > aspect_ratio * h
    w, h = torch.where(wider, w, h * aspect_ratio), torch.where(wider, w / aspect_ratio, h)
    return centers, torch.stack((w, h), dim=1) * padding


def crop_theta(centers: torch.Tensor, scales: torch.Tensor, out_size: Tuple[int, int],
               flip: bool = False) -> torch.Tensor:
    """float32 [K, 2, 3]: for each crop, the map from an output pixel ``(x_out, y_out, 1)`` to image pixel
    coordinates ``(x_in, y_in)`` (the inverse map, as ``cv2.warpAffine`` with ``WARP_INVERSE_MAP`` takes it).

    ``out_size``: (height, width) of the crop. ``flip``: the mirrored crop, whose column ``x_out`` is column
    ``out_w - 1 - x_out`` of the unflipped one (what a flip test feeds the network)."""
    out_h, out_w = out_size
    centers, scales = centers.to(torch.float32), scales.to(torch.float32)
    ax, ay = scales[:, 0] / out_w, scales[:, 1] / out_h
    zero = torch.zeros_like(ax)
    if flip:  # x_in = cx + ((out_w - 1 - x_out) - out_w / 2) * ax
        row_x = torch.stack((-ax, zero, centers[:, 0] + (out_w / 2 - 1) * ax), dim=1)
    else:
        row_x = torch.stack((ax, zero, centers[:, 0] - out_w / 2 * ax), dim=1)
    row_y = torch.stack((zero, ay, centers[:, 1] - out_h / 2 * ay), dim=1)
    return torch.stack((row_x, row_y), dim=1)


def to_image(coords: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor,
             map_size: Tuple[int, int]) -> torch.Tensor:
    """[K, J, 2] map coordinates (x, y) of a ``map_size`` = (h, w) map over each crop, in image pixels."""
    h, w = map_size
    size = torch.tensor([w, h], dtype=torch.float32, device=coords.device)
    return centers[:, None, :] + (coords - size / 2) * (scales[:, None, :] / size)
