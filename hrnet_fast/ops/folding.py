"""Folding BatchNorm into the preceding convolution: pure tensor math, always in fp32.

For y = BN(conv(x, w) + b) with running mean mu, variance var, scale gamma, shift beta:
    s  = gamma / sqrt(var + eps)
    w' = w * s            (per output channel)
    b' = (b - mu) * s + beta
so y = conv(x, w') + b'. Done in fp32 whatever the parameters' dtype; cast to the run dtype afterwards.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn


def fold_bn_weights(weight: torch.Tensor, bias: Optional[torch.Tensor], running_mean: torch.Tensor,
                    running_var: torch.Tensor, eps: float, gamma: Optional[torch.Tensor] = None,
                    beta: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (w', b') in fp32 for conv weight [Cout, Cin, kh, kw] and BN statistics [Cout]."""
    w = weight.detach().float()
    mean = running_mean.detach().float()
    scale = torch.rsqrt(running_var.detach().float() + eps)
    if gamma is not None:
        scale = scale * gamma.detach().float()
    b = bias.detach().float() if bias is not None else torch.zeros_like(mean)
    shift = beta.detach().float() if beta is not None else torch.zeros_like(mean)
    return w * scale.reshape(-1, 1, 1, 1), (b - mean) * scale + shift


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(w', b') in fp32 for ``bn(conv(x))``; BN must hold running statistics (eval-mode semantics)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    if conv.out_channels != bn.num_features:
        raise ValueError(f"conv has {conv.out_channels} output channels but BatchNorm2d has {bn.num_features}")
    return fold_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                           bn.weight if bn.affine else None, bn.bias if bn.affine else None)
