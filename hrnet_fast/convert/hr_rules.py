"""The HR-module rule of the ``Rewriter``: a module with ``branches`` and ``fuse_layers`` becomes a
``FusedHRModule``, each output branch's fusion one ``multires_fuse``.

How an upsampled term reaches its target's size decides the fused op's mode. Three layouts are recognised, by
structure and, where the structure does not say, by running the parts:
- ``Sequential(conv, BN, nn.Upsample(scale_factor=2**(j-i), mode="nearest"))`` (timm, ours, official pose,
  mmpretrain, mmpose): nearest.
- ``Sequential(conv, BN)`` resized bilinearly to the target's exact size by the module: ours through a ``resize``
  module with its ``align_corners``, the official segmentation code in its forward (``probe.hr_module_align_corners``).
- ``Sequential(conv, BN, R)`` with ``R`` any other resize module (``nn.Upsample`` bilinear, mmsegmentation's
  ``mmseg.models.utils.Upsample``: attributes ``scale_factor``, ``mode``, ``align_corners``): ``R``'s behaviour is
  checked against ``F.interpolate`` to the exact multiple (``probe.resize_module``), and the module's forward is run
  to find whether it resizes ``R``'s output once more to the target's size (mmsegmentation's ``HRModule`` does,
  bilinearly with align_corners=False; ``probe.hr_module_post_resize``). Where every branch is exactly half the one
  above (a 512x1024 image: 128x256, 64x128, ...) ``R`` alone reaches the target's size and the second resize is an
  identity, so the term is one nearest or bilinear (``R``'s align_corners) upsample inside ``multires_fuse``; at
  other sizes ``FusedHRFuse`` composes ``R`` and the forward's resize as the module does (``exact_only``).
Anything else is left to the module's own forward, with the reason in the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional

import torch.nn as nn

from . import probe
from ..ops.folding import is_foldable_bn
from .fused import ExactOnly, FusedHRFuse, FusedHRModule
from .report import FusionReport

if TYPE_CHECKING:
    from .rewriter import Rewriter


@dataclass
class UpTerms:
    """How one HR module's upsampled terms are resized. ``kind``: "nearest" (a nearest ``nn.Upsample`` in the
    term), "bilinear" (the module resizes a bare conv+BN term, ``align_corners``), "module" (a resize module ends the
    term; ``post``: what the forward does with its output)."""
    kind: str
    align_corners: bool = False
    post: Optional[probe.PostResize] = None


def _up_terms(fuse_layers: nn.ModuleList):
    return [(i, j, f) for i, row in enumerate(fuse_layers) for j, f in enumerate(row) if j > i]


def _conv_bn(mods) -> bool:
    return len(mods) >= 2 and isinstance(mods[0], nn.Conv2d) and is_foldable_bn(mods[1])


def resized_by_forward(fuse_layers: nn.ModuleList) -> bool:
    """Whether every upsampled term is a bare Sequential(conv, BN), which the module's forward must resize."""
    terms = _up_terms(fuse_layers)
    return bool(terms) and all(isinstance(f, nn.Sequential) and len(f) == 2 and _conv_bn(list(f))
                               for _, _, f in terms)


def _nearest_upsample(r: nn.Module, factor: int) -> bool:
    return type(r) is nn.Upsample and r.mode == "nearest" and r.size is None \
        and r.scale_factor in (factor, float(factor))


def _resize_module_terms(fuse_layers: nn.ModuleList) -> bool:
    """Whether every upsampled term is Sequential(conv, BN, R) with R a resize module (attributes ``scale_factor``
    and ``mode``), not all of them nearest ``nn.Upsample``s."""
    terms = _up_terms(fuse_layers)
    if not terms or not all(isinstance(f, nn.Sequential) and len(f) == 3 and _conv_bn(list(f))
                            and hasattr(f[2], "scale_factor") and hasattr(f[2], "mode") for _, _, f in terms):
        return False
    return not all(_nearest_upsample(f[2], 2 ** (j - i)) for i, j, f in terms)


def _how(rw: "Rewriter", path: str, m: nn.Module, fuse_layers: nn.ModuleList) -> Optional[UpTerms]:
    resize = getattr(m, "resize", None)
    if isinstance(getattr(resize, "align_corners", None), bool):
        return UpTerms("bilinear", resize.align_corners)
    if resized_by_forward(fuse_layers):
        align_corners = probe.hr_module_align_corners(m)
        if align_corners is None:
            rw.report.skip(f"{path}.fuse_layers", "hr fuse", "its forward adds the upsampled terms in a way other "
                           "than a bilinear resize to the target branch's size")
            return None
        return UpTerms("bilinear", align_corners)
    if _resize_module_terms(fuse_layers):
        post = probe.hr_module_post_resize(m)
        if post is None:
            rw.report.skip(f"{path}.fuse_layers", "hr fuse", "its forward adds the resize modules' outputs in a way "
                           "other than as they are or resized bilinearly to the target branch's size")
            return None
        return UpTerms("module", post=post)
    return UpTerms("nearest")


def hr_module(rw: "Rewriter", path: str, m: nn.Module) -> Optional[nn.Module]:
    """The ``FusedHRModule`` for ``m``, or None (then the walk goes on into its children). The fusions are built
    first, into a report of their own: only when every one of them is fused are the branches rewritten and the
    entries kept; otherwise only the reasons are, and the children are fused by the walk (and reported once)."""
    branches, fuse_layers = getattr(m, "branches", None), getattr(m, "fuse_layers", None)
    if not isinstance(branches, nn.ModuleList):
        return None
    n = len(branches)
    fuses: List[FusedHRFuse] = []
    outer, rw.report = rw.report, FusionReport()
    try:
        # The fusion ends in a ReLU module (timm: fuse_act; official, mmpretrain, mmseg: relu).
        if n > 1 and isinstance(fuse_layers, nn.ModuleList) and any(isinstance(c, nn.ReLU) for c in m.children()):
            how = _how(rw, path, m, fuse_layers)
            for i, terms in enumerate(fuse_layers if how is not None else []):
                fuse = hr_fuse(rw, f"{path}.fuse_layers.{i}", i, terms, how)
                if fuse is None:
                    break
                fuses.append(fuse)
    finally:
        scratch, rw.report = rw.report, outer
    if n > 1 and (not fuses or len(fuses) != len(fuse_layers) or len(fuses) not in (1, n)):
        rw.report.unfused += [e for e in scratch.unfused if e.pattern == "hr fuse"]
        return None
    rw.report.fused += scratch.fused
    rw.report.unfused += scratch.unfused
    new_branches = [rw.any(f"{path}.branches.{i}", b) for i, b in enumerate(branches)]
    return FusedHRModule(new_branches, fuses)


def hr_fuse(rw: "Rewriter", path: str, i: int, terms: nn.ModuleList, how: UpTerms) -> Optional[FusedHRFuse]:
    """One output branch's fusion (see the module docstring for the layouts ``how`` names)."""
    up: Dict[int, nn.Module] = {}
    down: Dict[int, nn.Module] = {}
    mode, align_corners = ("bilinear", how.align_corners) if how.kind == "bilinear" else ("nearest", False)
    resizers: Dict[int, nn.Module] = {}
    for j, f in enumerate(terms):
        p = f"{path}.{j}"
        if j == i:
            if not (f is None or isinstance(f, nn.Identity)):
                rw.report.skip(p, "hr fuse", "diagonal term is not an identity")
                return None
        elif j > i:
            mods = list(f) if isinstance(f, nn.Sequential) else []
            if how.kind == "bilinear":
                ok, expected = len(mods) == 2, "Sequential(conv, bn) resized bilinearly by the module"
            elif how.kind == "nearest":
                ok = len(mods) == 3 and _nearest_upsample(mods[2], 2 ** (j - i))
                expected = "Sequential(conv, bn, nearest Upsample)"
            else:
                ok, expected = len(mods) == 3, "Sequential(conv, bn, resize module)"
            if not (ok and _conv_bn(mods)):
                if not (ok and rw.bn_refused(p, "hr fuse", mods[1:2])):
                    rw.report.skip(p, "hr fuse", f"upsample term is not {expected}")
                return None
            if how.kind == "module":
                resized = probe.resize_module(mods[2], 2 ** (j - i))
                if resized is None or (resizers and resized != (mode, align_corners)):
                    rw.report.skip(f"{p}.2", "hr fuse", f"{type(mods[2]).__name__} does not upsample as "
                                   f"F.interpolate(scale 2**{j - i}, nearest or bilinear) does, the same way as the "
                                   f"row's other terms")
                    return None
                mode, align_corners = resized
                resizers[j] = mods[2]
            up[j] = rw.conv(f"{p}.0", mods[0], mods[1], relu=False)
        else:
            chain = rw.sequential(p, f) if isinstance(f, nn.Sequential) else None
            if chain is None:
                rw.report.skip(p, "hr fuse", "downsample term is not a chain of conv+bn(+relu)")
                return None
            down[j] = chain
    detail = f"{len(up)} {mode}-upsampled + {len(down)} downsampled terms, one multires_fuse"
    if resizers:
        detail += (f" ({type(next(iter(resizers.values()))).__name__}"
                   + ("" if how.post.align_corners is None else f", then the forward's bilinear resize "
                                                  f"(align_corners={how.post.align_corners})")
                   + "; composed as the module does where a branch is not exactly half the one above)")
    rw.report.add(path, "hr fuse", detail)
    exact_only = ExactOnly(resizers, how.post.align_corners) if resizers else None
    return FusedHRFuse(i, up, down, rw.backend, mode, align_corners, exact_only)
