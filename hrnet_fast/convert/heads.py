"""What sits around an HRNet backbone: the HRNetV2 segmentation head, fused algebraically, and any other head
(a pose head's 1x1 conv, a custom conv -> BN -> ReLU stack), fused after the HRNet rules have run
(``walk.py``).

The segmentation head is ``last_layer(cat(x_0, up(x_1), up(x_2), up(x_3)))`` with ``last_layer`` = 1x1 conv (bias)
-> BN -> ReLU -> 1x1 conv. A per-pixel linear map commutes with bilinear resizing (linear and per channel), so

    BN(conv1x1(cat_i up_i(x_i))) = sum_i up_i(W_i x_i) + b'

with W_i the slice of the BN-folded weight that reads branch i's channels and b' the folded bias, added once. The
fused head runs each W_i at its branch's own resolution (4x, 16x, 64x fewer pixels for branches 1..3), then one
``multires_fuse(mode="bilinear", relu=True)`` reads the low-resolution terms in place and sums them onto branch
0's term: neither the upsampled maps nor the concatenation (720 channels at stride 4 for W48) are materialised.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

from ..ops.folding import fold_bn, is_foldable_bn
from . import probe
from .pose_seg_heads import fuse_task_heads
from .fused import fuse
from .rewriter import Rewriter


class FusedSegHead(nn.Module):
    """The HRNetV2 head on the list of branch maps: per-branch slices of the folded 1x1 conv, one bilinear
    ``multires_fuse`` (+ReLU) onto branch 0's size, then the classifier conv (see the module docstring)."""

    def __init__(self, slices: List[nn.Module], classifier: nn.Module, align_corners: bool,
                 backend: Optional[str]):
        super().__init__()
        self.slices = nn.ModuleList(slices)
        self.classifier = classifier
        self.align_corners = align_corners
        self.requested_backend = backend

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        ys = [f(x) for f, x in zip(self.slices, xs)]
        y = fuse(ys[0], ys[1:], [], "bilinear", self.align_corners, self.requested_backend)
        return self.classifier(y)


class FusedSegmentation(nn.Module):
    """A segmentation HRNet converted: its backbone (rewritten in place) and the fused head that replaced its
    ``last_layer``. The branch maps come from the backbone's ``features`` (ours) or, for a model in the official
    repository's layout (``official_layout``), from ``probe.official_features``, which runs its parts as its
    forward does."""

    def __init__(self, backbone: nn.Module, head: FusedSegHead, official_layout: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.official_layout = official_layout
        # Read through ConvertedModel as on the model.
        self.num_classes = getattr(backbone, "num_classes", None)
        for name in ("num_features", "pretrained_cfg", "default_cfg"):
            if hasattr(backbone, name):
                setattr(self, name, getattr(backbone, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.official_layout:
            return self.head(probe.official_features(self.backbone, x))
        self.backbone.check_input(x)
        return self.head(self.backbone.features(x))


def _is_conv1x1(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1 \
        and m.padding in ((0, 0), "valid") and m.dilation == (1, 1)


def _head_layers(last: nn.Module, widths: Optional[List[int]]) -> bool:
    """Whether ``last`` is the HRNetV2 ``last_layer``: Sequential(1x1 conv over sum(widths) channels, BN, ReLU,
    conv)."""
    if not (isinstance(last, nn.Sequential) and len(last) == 4 and widths):
        return False
    conv, bn, relu, classifier = last
    return (_is_conv1x1(conv) and is_foldable_bn(bn) and isinstance(relu, nn.ReLU)
            and isinstance(classifier, nn.Conv2d) and conv.in_channels == sum(widths))


def split_head(rw: Rewriter, net: nn.Module, widths: List[int], align_corners: bool) -> FusedSegHead:
    """The fused head for ``net.last_layer`` (checked by ``_head_layers``) over branches resized bilinearly with
    ``align_corners``, taken out of ``net``."""
    conv, bn, _, classifier = net.last_layer
    head = fused_seg_head(rw, ("last_layer.0", "last_layer.3", "last_layer"), conv, bn, classifier, widths,
                          align_corners)
    del net.last_layer  # the fused head replaces it
    return head


def fused_seg_head(rw: Rewriter, paths, conv: nn.Conv2d, bn: nn.Module, classifier: nn.Conv2d, widths: List[int],
                   align_corners: bool) -> FusedSegHead:
    """The fused head for ``classifier(relu(bn(conv(cat(x_0, up(x_1), ...)))))`` over branches of ``widths``
    resized bilinearly with ``align_corners``; ``paths``: (the 1x1 conv's, the classifier's, the head's) in the
    report."""
    weight, bias = fold_bn(conv, bn)  # fp32: [C, sum(widths), 1, 1], [C]
    slices, start = [], 0
    for i, width in enumerate(widths):
        part = nn.Conv2d(width, conv.out_channels, 1, bias=i == 0, device=weight.device)
        with torch.no_grad():
            part.weight.copy_(weight[:, start:start + width])
            if i == 0:
                part.bias.copy_(bias)  # the folded bias, added once
        slices.append(rw.conv(f"{paths[0]}[{start}:{start + width}]", part, None, relu=False))
        start += width
    head = FusedSegHead(slices, rw.conv(paths[1], classifier, None, relu=False), align_corners, rw.backend)
    rw.report.add(paths[2], "segmentation head",
                  f"BN folded, 1x1 conv split over {len(widths)} branches at their own resolution, one bilinear "
                  f"multires_fuse (+ReLU), no concat")
    return head


def segmentation_head(rw: Rewriter, net: nn.Module) -> Optional[FusedSegHead]:
    """The fused head of our HRNetV2 segmentation model (``features``, ``head_resize`` and ``last_layer`` over the
    concatenated branches), taken out of ``net``; None when ``net`` has no such head. First, HigherHRNet's and
    HRNet-OCR's head parts are fused in place (``pose_seg_heads.py``), whatever the head."""
    fuse_task_heads(rw, net)
    resize, widths = getattr(net, "head_resize", None), getattr(net, "stage_channels", None)
    if not (callable(getattr(net, "features", None)) and isinstance(getattr(resize, "align_corners", None), bool)
            and _head_layers(getattr(net, "last_layer", None), widths)):
        return None
    head = split_head(rw, net, list(widths), resize.align_corners)
    del net.head_resize
    return head


def official_segmentation_widths(net: nn.Module) -> Optional[List[int]]:
    """The stage-4 branch widths of a segmentation HRNet in the official repository's layout (``last_layer``
    over the concatenated branches, ``num_inchannels`` on the HR modules, no ``features``), else None."""
    stage4 = getattr(net, "stage4", None)
    widths = getattr(stage4[-1], "num_inchannels", None) if isinstance(stage4, nn.Sequential) and len(stage4) \
        else None
    if callable(getattr(net, "features", None)) or not isinstance(widths, (list, tuple)) or \
            not _head_layers(getattr(net, "last_layer", None), list(widths)):
        return None
    return list(widths)

