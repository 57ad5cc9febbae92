"""The plain-PyTorch segmentation pipeline, the definition of the answers ``Segmenter`` gives (``fused=False``).

    normalize   uint8 [N, H, W, 3] -> (v / 255 - mean) / std, [N, 3, H, W] in the run dtype
    whole       the network on the image, its stride-4 logits resized to H x W (bilinear, the model's
                align_corners)
    slide       mmsegmentation's ``slide_inference``: each window (``windows.slide_windows``) through the network,
                its logits resized to the window's size and added into an [N, C, H, W] canvas, which is divided by
                how many windows cover each pixel
    flip        the same on the horizontally mirrored image, mirrored back and averaged: the mean of the logits
                (HRNet-Semantic-Segmentation's flip test) or of their softmaxes (mmsegmentation's test-time
                flip), ``flip_average`` "logits" or "softmax"
    class map   argmax over the classes (the first maximum on ties) of the averaged logits or probabilities

Every step materialises its full-resolution result, as eager PyTorch pipelines do; the canvas and the resized
logits are in the run dtype.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .windows import slide_windows

Network = Callable[[torch.Tensor], torch.Tensor]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> [N, 3, H, W] ``(v / 255 - mean[c]) / std[c]`` computed in fp32, then cast."""
    x = images.permute(0, 3, 1, 2).float().div(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(dtype).contiguous()


def whole_logits(net: Network, x: torch.Tensor, align_corners: bool) -> torch.Tensor:
    return F.interpolate(net(x), size=x.shape[-2:], mode="bilinear", align_corners=align_corners)


def slide_logits(net: Network, x: torch.Tensor, num_classes: int, crop: Tuple[int, int], stride: Tuple[int, int],
                 align_corners: bool) -> torch.Tensor:
    n, _, height, width = x.shape
    canvas = None
    count = torch.zeros(1, 1, height, width, dtype=x.dtype, device=x.device)
    for win in slide_windows(height, width, crop, stride):
        out = net(x[:, :, win.y1:win.y2, win.x1:win.x2])
        out = F.interpolate(out, size=(win.y2 - win.y1, win.x2 - win.x1), mode="bilinear",
                            align_corners=align_corners)
        if canvas is None:
            canvas = torch.zeros(n, num_classes, height, width, dtype=out.dtype, device=x.device)
        canvas[:, :, win.y1:win.y2, win.x1:win.x2] += out
        count[:, :, win.y1:win.y2, win.x1:win.x2] += 1
    return canvas / count.to(canvas.dtype)


def scores(net: Network, x: torch.Tensor, num_classes: int, align_corners: bool, crop: Optional[Tuple[int, int]],
           stride: Optional[Tuple[int, int]], flip: bool, flip_average: str) -> Tuple[torch.Tensor, bool]:
    """The full-resolution scores the class map is the argmax of, and whether they are probabilities already
    (a softmax average) rather than logits."""
    def one(image: torch.Tensor) -> torch.Tensor:
        if crop is None:
            return whole_logits(net, image, align_corners)
        return slide_logits(net, image, num_classes, crop, stride, align_corners)

    out = one(x)
    if not flip:
        return out, False
    mirrored = one(x.flip(-1)).flip(-1)
    if flip_average == "softmax":
        return (out.softmax(1, dtype=torch.float32) + mirrored.softmax(1, dtype=torch.float32)) / 2, True
    return (out + mirrored) * 0.5, False


def class_map(merged: torch.Tensor, label_dtype: torch.dtype) -> torch.Tensor:
    return merged.argmax(1).to(label_dtype)


def probabilities(merged: torch.Tensor, are_probabilities: bool) -> torch.Tensor:
    return merged.float() if are_probabilities else merged.softmax(1, dtype=torch.float32)
