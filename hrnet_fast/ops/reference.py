"""Pure-PyTorch reference compositions: the definition of correct for every backend.

Tests and benchmarks import these; the ``torch`` backend runs them. They compute in the input dtype, as eager
PyTorch would, so their error in fp16 is "PyTorch's own fp16 error" in the tolerance rule.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def conv_bn_act_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, stride: int = 1,
                    padding: int = 0, residual: Optional[torch.Tensor] = None, relu: bool = True) -> torch.Tensor:
    """relu(conv2d(x, weight, bias, stride, padding) + residual): BN already folded into weight and bias."""
    y = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    if residual is not None:
        y = y + residual
    return torch.relu(y) if relu else y


def multires_fuse_ref(x: torch.Tensor, low_res: Sequence[torch.Tensor] = (), same_res: Sequence[torch.Tensor] = (),
                      *, relu: bool = True, mode: str = "nearest", align_corners: bool = False) -> torch.Tensor:
    """relu(x + sum_j up(z_j) + sum_k d_k), each z_j upsampled to x's size by ``F.interpolate``.

    mode="nearest": each z_j smaller than x by a power-of-two factor. mode="bilinear": any z_j no larger than x,
    ``F.interpolate(z_j, size=x.shape[-2:], mode="bilinear", align_corners=align_corners)``.
    """
    extra = {"align_corners": align_corners} if mode == "bilinear" else {}
    y = x
    for z in low_res:
        y = y + F.interpolate(z, size=x.shape[-2:], mode=mode, **extra)
    for d in same_res:
        y = y + d
    if relu:
        y = torch.relu(y)
    elif y is x:
        y = x.clone()
    return y
