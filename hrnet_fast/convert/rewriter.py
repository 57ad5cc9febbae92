"""Module-swap rewriting of HRNet-structured models (ours, timm's, the official repo's, mmpretrain's).

HRNet parts are recognised by structure, not by class: a residual block is a module with ``conv1/bn1, conv2/bn2
[, conv3/bn3]`` and a ``downsample`` slot; an HR module has ``branches`` and ``fuse_layers``; a conv step is a
``Sequential(Conv2d, BN[, ReLU])`` (the BN and ReLU may sit in a Sequential of their own) or an mmcv ``ConvModule``;
a BN is any foldable form (``hrnet_fast.ops.folding.is_foldable_bn``: BatchNorm2d, SyncBatchNorm, frozen BNs, mmcv's
subclasses). Each recognised part is replaced, in place, by its fused module, so
the model's own ``forward`` keeps running (its control flow, its outputs) but calls fused kernels. BatchNorm and
ReLU modules absorbed into a fused conv become ``nn.Identity``.
"""
from __future__ import annotations

import collections
from typing import Optional

import torch
import torch.nn as nn

from . import hr_rules, lite_rules
from .fused import FusedBlock, FusedBranch, FusedChain, FusedHRModule, FusedStage, make_conv
from ..ops.folding import bn_not_foldable, is_batchnorm, is_foldable_bn
from .norm_steps import bn_relu_after
from .report import FusionReport, report_conv

# Children a residual block may carry that are identities at inference (timm: drop_block, aa, se, drop_path).
_INERT = (nn.Identity, nn.Dropout, nn.Dropout2d)
_INERT_NAMES = ("DropPath", "DropBlock2d")


def _is_inert(m: Optional[nn.Module]) -> bool:
    return m is None or isinstance(m, _INERT) or type(m).__name__ in _INERT_NAMES


def norm(m: nn.Module, k: int) -> Optional[nn.Module]:
    """BN number k of a block or stem: ``bn{k}`` (timm, official, mmcv's ``norm{k}_name``)."""
    return getattr(m, f"bn{k}", None)


class Rewriter:
    def __init__(self, dtype: torch.dtype, backend: Optional[str], report: FusionReport):
        self.dtype = dtype
        self.backend = backend
        self.report = report

    def bn_refused(self, path: str, pattern: str, modules) -> bool:
        """Whether one of ``modules`` is a BatchNorm that normalises with batch statistics (so nothing it is part
        of folds), reported with the reason: when the leftovers are listed, convert() has put every module in eval
        mode."""
        for m in modules:
            why = bn_not_foldable(m) if m is not None and is_batchnorm(m) else None
            if why is not None:
                self.report.skip(path, pattern, f"not folded: {why}")
                return True
        return False

    # -- conv steps --------------------------------------------------------------------------------------------
    def conv(self, path: str, conv: nn.Conv2d, bn: Optional[nn.Module], relu: bool) -> nn.Module:
        if bn is not None and not is_foldable_bn(bn):
            raise TypeError(f"{path}: expected a foldable BatchNorm after the conv, got {type(bn).__name__}"
                            + (f" ({bn_not_foldable(bn)})" if is_batchnorm(bn) else ""))
        fused, why = make_conv(conv, bn, relu, self.dtype, self.backend)
        pattern = "conv" + ("+bn" if bn is not None else "") + ("+relu" if relu else "")
        report_conv(self.report, path, pattern, conv, why)
        return fused

    def sequential(self, path: str, seq: nn.Sequential) -> Optional[nn.Module]:
        """Sequential(Conv2d, BN[, ReLU]) (``bn_relu_after``) or a Sequential of such steps -> a fused conv or
        chain; else None."""
        mods = list(seq)
        if mods and all(isinstance(m, nn.Sequential) for m in mods):
            steps = [self.sequential(f"{path}.{i}", m) for i, m in enumerate(mods)]
            return FusedChain(*steps) if all(s is not None for s in steps) else None
        if mods and isinstance(mods[0], nn.Conv2d):
            bn, relu, taken = bn_relu_after(mods, 1)
            if bn is not None and 1 + taken == len(mods):
                return self.conv(path, mods[0], bn, relu=relu)
            self.bn_refused(path, "conv step", list(seq.modules())[1:])
        return None

    def conv_module(self, path: str, m: nn.Module) -> Optional[nn.Module]:
        """mmcv's ConvModule (mmcv/cnn/bricks/conv_module.py; mmpretrain's HRFuseScales neck, mmseg's heads,
        Lite-HRNet's blocks): ``conv``, a BN named by ``norm_name`` (``bn`` for BN and SyncBN; ``norm_name`` None
        without a norm layer, the conv then carrying a bias), an ``activate`` when ``with_activation``, applied in
        ``order`` ('conv', 'norm', 'act'). A ReLU goes into the fused conv's epilogue; another activation (Lite-HRNet's
        Sigmoid) runs after it as it is. An explicit padding layer (``with_explicit_padding``) runs before the conv, so
        such a module is left as it is."""
        conv = getattr(m, "conv", None)
        if not isinstance(conv, nn.Conv2d) or not hasattr(m, "norm_name"):
            return None
        norm_name = m.norm_name
        bn = getattr(m, norm_name, None) if isinstance(norm_name, str) else None
        act = getattr(m, "activate", None) if getattr(m, "with_activation", True) else None
        if bn is not None and is_batchnorm(bn) and bn_not_foldable(bn) is not None:
            self.report.skip(path, "ConvModule", bn_not_foldable(bn))
            return None
        if getattr(m, "with_explicit_padding", False):
            self.report.skip(path, "ConvModule", "its explicit padding layer runs before the conv, so it is not "
                                                 "fused as a unit")
            return None
        if not (norm_name is None or is_foldable_bn(bn)) \
                or tuple(getattr(m, "order", ("conv", "norm", "act"))) != ("conv", "norm", "act") \
                or not (act is None or isinstance(act, nn.Module)):
            self.report.skip(path, "ConvModule", "not conv -> BN (-> activation)")
            return None
        relu = isinstance(act, nn.ReLU)
        fused = self.conv(path, conv, bn, relu=relu)
        return fused if act is None or relu else nn.Sequential(fused, act)

    # -- residual blocks ---------------------------------------------------------------------------------------
    def block(self, path: str, m: nn.Module) -> Optional[nn.Module]:
        names = ["conv1", "conv2"] + (["conv3"] if hasattr(m, "conv3") else [])
        if not all(isinstance(getattr(m, n, None), nn.Conv2d) for n in names) or not hasattr(m, "downsample"):
            return None
        bns = [norm(m, k + 1) for k in range(len(names))]
        if self.bn_refused(path, "residual block", bns) or not all(is_foldable_bn(b) for b in bns):
            return None
        known = set(names) | {f"bn{k + 1}" for k in range(len(names))} | {"downsample"}
        for name, child in m.named_children():
            if name in known or isinstance(child, nn.ReLU) or _is_inert(child):
                continue
            self.report.skip(path, "residual block", f"child {name!r} ({type(child).__name__}) is not a no-op")
            return None
        for attr in ("se", "aa", "drop_block", "drop_path"):
            if not _is_inert(getattr(m, attr, None)):
                self.report.skip(path, "residual block", f"{attr} is active")
                return None
        downsample = None
        if m.downsample is not None:
            downsample = self.sequential(f"{path}.downsample", m.downsample)
            if downsample is None:
                self.report.skip(path, "residual block", "downsample is not Sequential(conv, bn)")
                return None
        convs = [self.conv(f"{path}.{n}", getattr(m, n), b, relu=True) for n, b in zip(names, bns)]
        self.report.add(path, "bottleneck block" if len(names) == 3 else "basic block",
                        "residual add + ReLU in the last conv's epilogue")
        return FusedBlock(convs, downsample)

    # -- HR modules (hr_rules.py) ----------------------------------------------------------------------------
    def hr_module(self, path: str, m: nn.Module) -> Optional[nn.Module]:
        return hr_rules.hr_module(self, path, m)

    # -- Lite-HRNet's shuffling blocks (lite_rules.py) -----------------------------------------------------------
    def lite_block(self, path: str, m: nn.Module) -> Optional[nn.Module]:
        new = lite_rules.shuffled_block(self, path, m)
        if new is not None:
            self.children(path, new)  # its convs, fused as anywhere else
        return new

    # -- stem --------------------------------------------------------------------------------------------------
    def stem(self, path: str, m: nn.Module) -> None:
        """HRNet's stem: conv1 -> bn1 -> act -> conv2 -> bn2 -> act, as attributes of the model (or backbone)."""
        for k in (1, 2):
            conv, bn = getattr(m, f"conv{k}"), norm(m, k)
            setattr(m, f"conv{k}", self.conv(f"{path}conv{k}", conv, bn, relu=True))
            setattr(m, f"bn{k}", nn.Identity())
            for act in (f"act{k}", "relu"):
                if isinstance(getattr(m, act, None), nn.ReLU):
                    setattr(m, act, nn.Identity())

    # -- the walk ----------------------------------------------------------------------------------------------
    def any(self, path: str, m: nn.Module) -> nn.Module:
        """The fused replacement for ``m``, or ``m`` with its children rewritten."""
        for rule in (self.hr_module, self.block, self.conv_module, self.lite_block):
            new = rule(path, m)
            if new is not None:
                return new
        if isinstance(m, nn.Sequential):
            new = self.sequential(path, m)
            if new is not None:
                return new
        self.children(path, m)
        # A plain Sequential of blocks or of HR modules becomes the fused run of them, with the same child names
        # (so the same state_dict keys).
        if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward and len(m):
            if all(isinstance(b, FusedBlock) for b in m):
                return FusedBranch(collections.OrderedDict(m.named_children()))
            if all(isinstance(b, FusedHRModule) for b in m):
                return FusedStage(collections.OrderedDict(m.named_children()))
        return m

    def children(self, path: str, m: nn.Module) -> None:
        prefix = f"{path}." if path else ""
        for name, child in list(m.named_children()):
            if child is None:
                continue
            new = self.any(prefix + name, child)
            if new is not child:
                setattr(m, name, new)
