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
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from . import probe
from .fused import FusedBlock, FusedBranch, FusedChain, FusedHRFuse, FusedHRModule, FusedStage, make_conv
from ..ops.folding import bn_not_foldable, is_batchnorm, is_foldable_bn
from .norm_steps import bn_relu_after
from .report import FusionReport

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
        if why is None:
            self.report.add(path, pattern)
        else:
            self.report.skip(path, pattern, f"BN folded into a plain conv: {why}")
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
        """mmcv's ConvModule (mmcv/cnn/bricks/conv_module.py; mmpretrain's HRFuseScales neck, mmseg's heads):
        ``conv``, a BN named by ``norm_name`` (``bn`` for BN and SyncBN), a ReLU ``activate`` when
        ``with_activation``, applied in ``order`` ('conv', 'norm', 'act'); an explicit padding layer
        (``with_explicit_padding``) runs before the conv, so such a module is left as it is."""
        conv, norm_name = getattr(m, "conv", None), getattr(m, "norm_name", None)
        if not isinstance(conv, nn.Conv2d) or not isinstance(norm_name, str):
            return None
        bn = getattr(m, norm_name, None)
        act = getattr(m, "activate", None) if getattr(m, "with_activation", True) else None
        if is_batchnorm(bn) and bn_not_foldable(bn) is not None:
            self.report.skip(path, "ConvModule", bn_not_foldable(bn))
            return None
        if not is_foldable_bn(bn) or tuple(getattr(m, "order", ("conv", "norm", "act"))) != ("conv", "norm", "act") \
                or not (act is None or isinstance(act, nn.ReLU)) or getattr(m, "with_explicit_padding", False):
            self.report.skip(path, "ConvModule", "not conv -> BN (-> ReLU)")
            return None
        return self.conv(path, conv, bn, relu=act is not None)

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

    # -- HR modules --------------------------------------------------------------------------------------------
    def hr_module(self, path: str, m: nn.Module) -> Optional[nn.Module]:
        branches, fuse_layers = getattr(m, "branches", None), getattr(m, "fuse_layers", None)
        if not isinstance(branches, nn.ModuleList):
            return None
        n = len(branches)
        # Segmentation HR modules resize each upsampled term bilinearly to the target's exact size: ours through
        # a ``resize`` module, the official ones in their forward (found by probing it, before any rewrite).
        align_corners: Optional[bool] = None
        resize = getattr(m, "resize", None)
        if n > 1 and isinstance(getattr(resize, "align_corners", None), bool):
            align_corners = resize.align_corners
        elif n > 1 and isinstance(fuse_layers, nn.ModuleList) and _resized_by_forward(fuse_layers):
            align_corners = probe.hr_module_align_corners(m)
            if align_corners is None:
                self.report.skip(f"{path}.fuse_layers", "hr fuse", "its forward adds the upsampled terms in a way "
                                 "other than a bilinear resize to the target branch's size")
        new_branches = [self.any(f"{path}.branches.{i}", b) for i, b in enumerate(branches)]
        fuses: List[FusedHRFuse] = []
        if n > 1:
            # The fusion ends in a ReLU module (timm: fuse_act; official, mmpretrain: relu).
            if not isinstance(fuse_layers, nn.ModuleList) or not any(
                    isinstance(c, nn.ReLU) for c in m.children()):
                return None
            if align_corners is None and _resized_by_forward(fuse_layers):
                return None
            for i, terms in enumerate(fuse_layers):
                fuse = self.hr_fuse(f"{path}.fuse_layers.{i}", i, terms, align_corners)
                if fuse is None:
                    return None
                fuses.append(fuse)
            if len(fuses) != n and len(fuses) != 1:
                return None
        return FusedHRModule(new_branches, fuses)

    def hr_fuse(self, path: str, i: int, terms: nn.ModuleList,
                bilinear_align_corners: Optional[bool]) -> Optional[FusedHRFuse]:
        """One output branch's fusion; ``bilinear_align_corners`` None: nearest Upsample terms, else bilinear
        resizing done by the module (terms are Sequential(conv, bn))."""
        bilinear = bilinear_align_corners is not None
        up: Dict[int, nn.Module] = {}
        down: Dict[int, nn.Module] = {}
        for j, f in enumerate(terms):
            p = f"{path}.{j}"
            if j == i:
                if not _is_inert(f):
                    self.report.skip(p, "hr fuse", "diagonal term is not an identity")
                    return None
            elif j > i:
                mods = list(f) if isinstance(f, nn.Sequential) else []
                if bilinear:
                    ok = len(mods) == 2
                    expected = "Sequential(conv, bn) resized bilinearly by the module"
                else:
                    ok = (len(mods) == 3 and isinstance(mods[2], nn.Upsample) and mods[2].mode == "nearest"
                          and mods[2].scale_factor in (2 ** (j - i), float(2 ** (j - i))))
                    expected = "Sequential(conv, bn, nearest Upsample)"
                if not (ok and isinstance(mods[0], nn.Conv2d) and is_foldable_bn(mods[1])):
                    if not (ok and self.bn_refused(p, "hr fuse", mods[1:2])):
                        self.report.skip(p, "hr fuse", f"upsample term is not {expected}")
                    return None
                up[j] = self.conv(f"{p}.0", mods[0], mods[1], relu=False)
            else:
                chain = self.sequential(p, f) if isinstance(f, nn.Sequential) else None
                if chain is None:
                    self.report.skip(p, "hr fuse", "downsample term is not a chain of conv+bn(+relu)")
                    return None
                down[j] = chain
        mode = "bilinear" if bilinear else "nearest"
        self.report.add(path, "hr fuse",
                        f"{len(up)} {mode}-upsampled + {len(down)} downsampled terms, one multires_fuse")
        return FusedHRFuse(i, up, down, self.backend, mode, bool(bilinear_align_corners))

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
        for rule in (self.hr_module, self.block, self.conv_module):
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


def _resized_by_forward(fuse_layers: nn.ModuleList) -> bool:
    """Whether every upsampled term is a bare Sequential(conv, BN), which the module's forward must resize."""
    terms = [f for i, row in enumerate(fuse_layers) for j, f in enumerate(row) if j > i]
    return bool(terms) and all(isinstance(f, nn.Sequential) and len(f) == 2 and isinstance(f[0], nn.Conv2d)
                               and is_foldable_bn(f[1]) for f in terms)
