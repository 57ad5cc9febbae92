"""A tiny HRNet trained in seconds on a synthetic task, to measure what reduced precision does to accuracy.

Random weights cannot show it (every implementation agrees with fp32 top-1 on only ~55 % of calibrated random
inputs, since the logits of an untrained net are nearly tied); a trained net has confident, meaningful logits.

The task: a 3x32x32 image of Gaussian noise with one faint blob in one of four quadrants; the label is the
quadrant. The blob's amplitude varies, so some images are hard and the accuracy is informative (not 100 %).
Everything is seeded: the same numbers on every run of one torch build on one CPU.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

from hrnet_fast.models import HighResolutionNet
from hrnet_fast.registry import _stage

TINY = dict(stem_width=16,
            stage1=_stage(1, (1,), (8,), "BOTTLENECK"),
            stage2=_stage(1, (1, 1), (8, 16)),
            stage3=_stage(1, (1, 1, 1), (8, 16, 32)),
            stage4=_stage(1, (1, 1, 1, 1), (8, 16, 32, 64)))
SIZE = 32
CLASSES = 4


def synthetic_batch(n: int, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """n images [n, 3, 32, 32] and labels [n] (the quadrant of the blob)."""
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    cy = 8 + 16 * (labels // 2) + torch.randint(-4, 5, (n,), generator=gen)
    cx = 8 + 16 * (labels % 2) + torch.randint(-4, 5, (n,), generator=gen)
    amp = 0.2 + 0.6 * torch.rand(n, generator=gen)
    ys, xs = torch.arange(SIZE).view(1, SIZE, 1), torch.arange(SIZE).view(1, 1, SIZE)
    blob = torch.exp(-((ys - cy.view(-1, 1, 1)) ** 2 + (xs - cx.view(-1, 1, 1)) ** 2) / 18.0)
    colour = torch.tensor([1.0, 0.5, -0.5]).view(1, 3, 1, 1)
    images = amp.view(-1, 1, 1, 1) * colour * blob.unsqueeze(1) + torch.randn(n, 3, SIZE, SIZE, generator=gen)
    return images, labels


class TinyHRNetClassifier(nn.Module):
    """The tiny HRNet's four branches (widths 8/16/32/64), each average-pooled, into one linear layer. (The
    classification head of the full nets is 2048 features wide whatever the branches: it would dominate.)"""

    def __init__(self):
        super().__init__()
        self.backbone = HighResolutionNet(TINY, features_only=True, feature_location="", out_indices=(1, 2, 3, 4))
        self.classifier = nn.Linear(8 + 16 + 32 + 64, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [f.mean(dim=(2, 3)) for f in self.backbone(x)]
        return self.classifier(torch.cat(pooled, dim=1).to(self.classifier.weight.dtype))


def trained_tiny_hrnet(steps: int = 150, batch: int = 32, seed: int = 0) -> nn.Module:
    """The tiny HRNet classifier after ``steps`` SGD steps on fresh synthetic batches; in eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TinyHRNetClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _ in range(steps):
        images, labels = synthetic_batch(batch, gen)
        loss = nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
