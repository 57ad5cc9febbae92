"""What sits around an HRNet backbone: the HRNetV2 segmentation head, fused algebraically, and any other head
(a pose head's 1x1 conv, a custom conv -> BN -> ReLU stack), fused after the HRNet rules have run.

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
from .fused import FUSED_MODULES, fuse
from .fx_fuse import fuse_graph
from .rewriter import Rewriter
from .norm_steps import bn_relu_after


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
    weight, bias = fold_bn(conv, bn)  # fp32: [C, sum(widths), 1, 1], [C]
    slices, start = [], 0
    for i, width in enumerate(widths):
        part = nn.Conv2d(width, conv.out_channels, 1, bias=i == 0, device=weight.device)
        with torch.no_grad():
            part.weight.copy_(weight[:, start:start + width])
            if i == 0:
                part.bias.copy_(bias)  # the folded bias, added once
        slices.append(rw.conv(f"last_layer.0[{start}:{start + width}]", part, None, relu=False))
        start += width
    head = FusedSegHead(slices, rw.conv("last_layer.3", classifier, None, relu=False), align_corners, rw.backend)
    rw.report.add("last_layer", "segmentation head",
                  f"BN folded, 1x1 conv split over {len(widths)} branches at their own resolution, one bilinear "
                  f"multires_fuse (+ReLU), no concat")
    del net.last_layer  # the fused head replaces it
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


def _contains(m: nn.Module, kinds) -> bool:
    return any(isinstance(s, kinds) for s in m.modules())


def fuse_rest(rw: Rewriter, path: str, m: nn.Module) -> None:
    """Fuses what the HRNet rules left under ``m`` (a head around the backbone): every plain ``nn.Sequential`` by
    its conv (-> BN) (-> ReLU) runs, other modules with convs through torch.fx when they hold no fused part, a
    bare conv (a pose head's 1x1 conv to heatmaps) as a fused conv with its bias."""
    prefix = f"{path}." if path else ""
    for name, child in list(m.named_children()):
        if child is not None:
            new = _fused(rw, prefix + name, child)
            if new is not child:
                setattr(m, name, new)


def _fused(rw: Rewriter, path: str, m: nn.Module) -> nn.Module:
    """The replacement of one module left by the HRNet rules (``m`` itself, rewritten inside, where it has none)."""
    if isinstance(m, FUSED_MODULES) or not _contains(m, nn.Conv2d):
        return m
    if isinstance(m, nn.Conv2d):
        return rw.conv(path, m, None, relu=False)
    if type(m) is nn.Sequential and any(isinstance(c, nn.Conv2d) for c in m):
        return _sequential_runs(rw, path, m)
    if not _contains(m, FUSED_MODULES):
        try:
            gm = fuse_graph(m, rw.dtype, rw.backend, rw.report, path)
        except Exception as e:  # not traceable: fall back to its module structure
            rw.report.skip(path, "torch.fx trace", f"{type(e).__name__}: {e}; only Sequential patterns fused")
        else:
            # Convs with no BN after them (an output conv) are called with one argument, as a fused conv is.
            for node in gm.graph.nodes:
                if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d):
                    gm.add_submodule(node.target, rw.conv(f"{path}.{node.target}", gm.get_submodule(node.target),
                                                          None, relu=False))
            return gm
    fuse_rest(rw, path, m)
    return m


def _sequential_runs(rw: Rewriter, path: str, seq: nn.Sequential) -> nn.Sequential:
    """``seq`` with each conv (-> BN) (-> ReLU) run replaced by one fused conv (nn.Sequential applies its modules
    in order, so the runs are the data flow); other modules kept, and fused inside where they have convs."""
    mods = list(seq)
    out: List[nn.Module] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d):
            bn, relu, taken = bn_relu_after(mods, i + 1)
            if bn is None:  # no foldable BN: the conv still takes a ReLU right after it
                rw.bn_refused(f"{path}.{i + 1}", "conv step", mods[i + 1:i + 2])
                relu = i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
                taken = int(relu)
            out.append(rw.conv(f"{path}.{i}", m, bn, relu))
            i += 1 + taken
        else:
            out.append(_fused(rw, f"{path}.{i}", m))
            i += 1
    return nn.Sequential(*out)
