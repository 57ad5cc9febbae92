"""Shared pieces of the segmentation pipeline tests: a tiny calibrated HRNetV2, images, the test's own
normalisation and whole-image scores (written from the conventions, not taken from the pipeline), and the check
that a class map equals expected scores' argmax except at ties."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import hrnet_fast
from tiny_hrnet import TINY

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiny_seg_model(num_classes: int = 5, align_corners: bool = False, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = hrnet_fast.SegHighResolutionNet(TINY, num_classes=num_classes, align_corners=align_corners)
    return hrnet_fast.calibrate_bn(model, (48, 48), steps=2, batch=2)


def images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 [n, height, width, 3]: smooth colour ramps plus noise, so the logits vary over the image."""
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, height, 1, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, width, 1)
    base = 255 * (0.5 * ys + 0.5 * xs.flip(2) * torch.tensor([1.0, 0.3, 0.7]))
    noise = 60 * torch.rand(n, height, width, 3, generator=gen)
    return (base + noise).clamp(0, 255).to(torch.uint8)


def normalized(batch: torch.Tensor) -> torch.Tensor:
    """(v / 255 - mean) / std, NCHW float32, contiguous (a permuted HWC tensor would be channels_last, and eager
    convolutions round differently in that layout)."""
    x = batch.permute(0, 3, 1, 2).to(torch.float32) / 255
    return ((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)).contiguous()


def whole_scores(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.interpolate(model(x), size=x.shape[-2:], mode="bilinear", align_corners=model.align_corners)


def network_gap(model, seg, x: torch.Tensor) -> float:
    """The largest difference between the eager model's stride-4 logits and those of the Segmenter's network on
    the same input: no average or resize of them can move a score by more."""
    with torch.no_grad():
        return float((model(x) - seg.net(x.to(seg.dtype)).float()).abs().max())


def disagreements_are_ties(labels: torch.Tensor, scores: torch.Tensor, bound: float) -> int:
    """Asserts that wherever ``labels`` differ from ``scores.argmax(1)`` the scores of the two labels are within
    ``bound`` of each other (a tie to the precision compared); returns how many pixels differ."""
    expected = scores.argmax(1)
    differ = labels.long() != expected
    if bool(differ.any()):
        picked = scores.gather(1, labels.long().unsqueeze(1)).squeeze(1)
        best = scores.gather(1, expected.unsqueeze(1)).squeeze(1)
        gaps = (best - picked)[differ]
        assert float(gaps.max()) <= bound, (f"{int(differ.sum())} pixels differ, the largest score gap "
                                            f"{float(gaps.max()):.3g} is beyond the tie bound {bound:.3g}")
    return int(differ.sum())
