"""BatchNorm calibration for models with random weights.

A freshly initialised HRNet has BN running stats at 0/1, so its activations grow through ~300 layers and its
logits reach 1e7+: useless for comparing numerics. A few train-mode forwards on random images set the running
statistics so activations are O(1), as a trained model's are.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


@torch.no_grad()
def calibrate_bn(model: nn.Module, input_size: Sequence[int] = (224, 224), steps: int = 3, batch: int = 4,
                 in_chans: int = 3, seed: int = 0) -> nn.Module:
    """Sets every BatchNorm's running statistics from ``steps`` random batches (cumulative average), returns
    the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    for _ in range(steps):
        x = torch.randn(batch, in_chans, *input_size, generator=gen).to(device)
        model(x)
    return model.eval()
