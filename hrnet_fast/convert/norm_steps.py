"""What follows a convolution inside an ``nn.Sequential``: the BatchNorm (and ReLU) a fused conv absorbs.

``nn.Sequential`` applies its modules in order, so a run of modules is the data flow. After a conv, the BN comes
either as the next module (``Sequential(Conv2d, BN, ReLU)``: timm, ours, mmcv) or wrapped with its ReLU in a
Sequential of its own (``Sequential(Conv2d, Sequential(BN, ReLU))``: HRNet-OCR's ``BNReLU`` helper).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch.nn as nn

from ..ops.folding import is_foldable_bn


def bn_relu_after(mods: Sequence[nn.Module], start: int) -> Tuple[Optional[nn.Module], bool, int]:
    """(bn, relu, taken) for the modules of ``mods`` from ``start`` on, following a conv: the foldable BN there
    (None if there is none), whether a ReLU follows it, and how many of ``mods`` those are."""
    if start >= len(mods):
        return None, False, 0
    first = mods[start]
    if isinstance(first, nn.Sequential) and type(first).forward is nn.Sequential.forward:
        inner = list(first)
        if 1 <= len(inner) <= 2 and is_foldable_bn(inner[0]) and all(isinstance(m, nn.ReLU) for m in inner[1:]):
            return inner[0], len(inner) == 2, 1
        return None, False, 0
    if not is_foldable_bn(first):
        return None, False, 0
    relu = start + 1 < len(mods) and isinstance(mods[start + 1], nn.ReLU)
    return first, relu, 1 + relu
