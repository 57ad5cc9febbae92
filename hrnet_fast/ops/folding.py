"""Folding BatchNorm into the preceding convolution: pure tensor math, always in fp32.

For y = BN(conv(x, w) + b) with running mean mu, variance var, scale gamma, shift beta:
    s  = gamma / sqrt(var + eps)
    w' = w * s            (per output channel)
    b' = (b - mu) * s + beta
so y = conv(x, w') + b'. Done in fp32 whatever the parameters' dtype; cast to the run dtype afterwards.

Which modules are such a BN is decided here, once, by structure (``is_batchnorm``, ``is_foldable_bn``): torch's
BatchNorm2d and SyncBatchNorm (the same op in eval mode) and their subclasses (mmcv's wrappers, its ``_BatchNormXd``),
and frozen BNs that hold the four statistics as buffers (torchvision's ``FrozenBatchNorm2d``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

_STATISTICS = ("weight", "bias", "running_mean", "running_var")


def _is_frozen_bn(m: nn.Module) -> bool:
    """torchvision's FrozenBatchNorm2d by structure: ``x * w / sqrt(var + eps) + (b - mean * ...)`` with the four
    statistics as 1-d buffers of one length, a float ``eps``, no parameters and no children (detectron2's frozen BN
    has the same layout)."""
    buffers = dict(m.named_buffers(recurse=False))
    if not type(m).__name__.endswith("BatchNorm2d") or not all(n in buffers for n in _STATISTICS):
        return False
    shapes = {tuple(buffers[n].shape) for n in _STATISTICS}
    return (len(shapes) == 1 and len(next(iter(shapes))) == 1 and isinstance(getattr(m, "eps", None), float)
            and not list(m.parameters(recurse=False)) and not list(m.children()))


def is_batchnorm(m: nn.Module) -> bool:
    """Whether ``m`` is a BatchNorm over [N, C, H, W] feature maps, in any of the forms the converter reads:
    torch's BatchNorm2d / SyncBatchNorm and subclasses of torch's ``_BatchNorm`` for any rank (mmcv's
    ``_BatchNormXd``), or a frozen BN (``_is_frozen_bn``). BatchNorm1d and BatchNorm3d reject 4-d input."""
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm3d)):
        return False
    return isinstance(m, nn.modules.batchnorm._BatchNorm) or _is_frozen_bn(m)


def bn_not_foldable(m: nn.Module) -> Optional[str]:
    """Why the BatchNorm ``m`` (``is_batchnorm``) is not a fixed per-channel affine map, or None when it is.

    torch's BN normalises with the batch's statistics in train mode, and in eval mode too without running statistics
    (``track_running_stats=False``); a frozen BN always uses its buffers."""
    if _is_frozen_bn(m):
        return None
    if m.running_mean is None or m.running_var is None:
        return f"{type(m).__name__} has no running statistics (track_running_stats=False): it normalises with each " \
               f"batch's statistics"
    if m.training:
        return f"{type(m).__name__} is in train mode (it normalises with each batch's statistics): call .eval() on it"
    return None


def is_foldable_bn(m: Optional[nn.Module]) -> bool:
    """Whether ``m`` is a BatchNorm whose forward is a fixed per-channel affine map, so it folds into a conv."""
    return m is not None and is_batchnorm(m) and bn_not_foldable(m) is None


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


def _statistics(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor, float, Optional[torch.Tensor],
                                        Optional[torch.Tensor]]:
    """(running_mean, running_var, eps, gamma, beta) of any ``is_batchnorm`` form; ValueError naming why not."""
    if not is_batchnorm(bn):
        raise ValueError(f"{type(bn).__name__} is not a BatchNorm over [N, C, H, W] feature maps")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold a {type(bn).__name__} without running statistics (track_running_stats=False)")
    affine = _is_frozen_bn(bn) or bn.affine
    return bn.running_mean, bn.running_var, bn.eps, bn.weight if affine else None, bn.bias if affine else None


def bn_scale_shift(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """(s, t) in fp32 with ``bn(x) = x * s + t`` per channel (eval-mode semantics) for any ``is_batchnorm`` form:
    s = gamma / sqrt(var + eps), t = beta - mean * s."""
    mean, var, eps, gamma, beta = _statistics(bn)
    scale, shift = fold_bn_weights(torch.ones(mean.numel(), 1, 1, 1), None, mean, var, eps, gamma, beta)
    return scale.flatten(), shift


def fold_bn(conv: nn.Conv2d, bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """(w', b') in fp32 for ``bn(conv(x))``, ``bn`` in any ``is_batchnorm`` form holding running statistics
    (eval-mode semantics: a BN left in train mode folds its running statistics)."""
    mean, var, eps, gamma, beta = _statistics(bn)
    if conv.out_channels != mean.numel():
        raise ValueError(f"conv has {conv.out_channels} output channels but {type(bn).__name__} has {mean.numel()}")
    return fold_bn_weights(conv.weight, conv.bias, mean, var, eps, gamma, beta)


def fold_bn_transposed_weights(weight: torch.Tensor, bias: Optional[torch.Tensor], running_mean: torch.Tensor,
                               running_var: torch.Tensor, eps: float, gamma: Optional[torch.Tensor] = None,
                               beta: Optional[torch.Tensor] = None, groups: int = 1
                               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(w', b') in fp32 for a transposed conv followed by BN. A ConvTranspose2d weight is [Cin, Cout/groups, kh,
    kw]: output channel ``g * Cout/groups + j`` is column j of group g's rows, so the scale goes on dim 1 within
    each group (not dim 0, as for a conv)."""
    w = weight.detach().float()
    cin, cout_g = w.shape[:2]
    scale, shift = fold_bn_weights(torch.ones(running_mean.numel(), 1, 1, 1), bias, running_mean, running_var, eps,
                                   gamma, beta)
    per_group = scale.reshape(groups, 1, cout_g, 1, 1)
    w = (w.reshape(groups, cin // groups, cout_g, *w.shape[2:]) * per_group).reshape(w.shape)
    return w, shift


def fold_bn_transposed(deconv: nn.ConvTranspose2d, bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """(w', b') in fp32 for ``bn(deconv(x))`` (a ConvTranspose2d), ``bn`` in any ``is_batchnorm`` form holding
    running statistics."""
    mean, var, eps, gamma, beta = _statistics(bn)
    if deconv.out_channels != mean.numel():
        raise ValueError(f"ConvTranspose2d has {deconv.out_channels} output channels but {type(bn).__name__} has "
                         f"{mean.numel()}")
    return fold_bn_transposed_weights(deconv.weight, deconv.bias, mean, var, eps, gamma, beta, deconv.groups)
