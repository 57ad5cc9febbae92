"""mmcv's ``ConvModule`` (mmcv 2.x ``mmcv/cnn/bricks/conv_module.py``) as OpenMMLab's HRNet code builds it, written
out for the tests: the same attribute names (``conv``, the norm layer registered under ``norm_name`` — ``bn`` for
BN and SyncBN, ``norm_name`` None without one —, ``activate``, ``with_norm``, ``with_activation``, ``order``), so
the same state-dict keys (``conv.weight``, ``bn.running_mean``, ...), and the same forward: conv, then norm, then
activation. As in mmcv, the conv has a bias exactly when there is no norm layer (``bias='auto'``)."""
from typing import Optional

import torch.nn as nn


class ConvModule(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 groups: int = 1, norm: bool = True, act: Optional[nn.Module] = None):
        super().__init__()
        self.with_norm = norm
        self.with_activation = act is not None
        self.with_explicit_padding = False
        self.order = ("conv", "norm", "act")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=not norm)
        self.norm_name = "bn" if norm else None
        if norm:
            self.add_module("bn", nn.BatchNorm2d(out_channels))
        if act is not None:
            self.activate = act

    def forward(self, x):
        x = self.conv(x)
        if self.with_norm:
            x = getattr(self, self.norm_name)(x)
        if self.with_activation:
            x = self.activate(x)
        return x
