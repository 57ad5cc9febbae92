"""mmsegmentation's decode head over an HRNet backbone, fused as the HRNetV2 head is (``heads.py``).

mmsegmentation's FCN-HRNet (``configs/_base_/models/fcn_hr18.py``) is an ``EncoderDecoder`` whose ``decode_head`` is
an ``FCNHead`` with ``input_transform='resize_concat'`` over every branch (``in_index`` 0..3): each branch map resized
bilinearly to the first one's size with the head's ``align_corners``, concatenated, ``convs`` (one ConvModule:
1x1 conv -> BN -> ReLU), then ``conv_seg`` (dropout, where there is one, is an identity at inference). That is the
HRNetV2 head, so it becomes a ``FusedSegHead``: the 1x1 conv split over the branches at their own resolution and one
bilinear ``multires_fuse``, with neither the resized copies nor the concatenation made.

The head is recognised by its attributes (mmseg's ``BaseDecodeHead`` names) and then checked by running it: on
random branch maps whose sizes do not halve exactly, its forward must equal that composition. Anything else is
left to the walk (its ConvModules fused one by one), with the reason in the report.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import probe
from ..ops.folding import is_foldable_bn
from .heads import fused_seg_head
from .rewriter import Rewriter

PATH = "decode_head"


def _conv_module(m: nn.Module) -> bool:
    """An mmcv ConvModule (``Rewriter.conv_module``) that is 1x1 conv -> BN -> ReLU."""
    conv, name = getattr(m, "conv", None), getattr(m, "norm_name", None)
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
            and isinstance(name, str) and is_foldable_bn(getattr(m, name, None))
            and isinstance(getattr(m, "activate", None), nn.ReLU) and getattr(m, "with_activation", False)
            and tuple(getattr(m, "order", ())) == ("conv", "norm", "act")
            and not getattr(m, "with_explicit_padding", False))


def branch_widths(net: nn.Module, head: nn.Module) -> Optional[List[int]]:
    """The channels of the branch maps ``head`` reads, in its ``in_index`` order. mmsegmentation's ``BaseDecodeHead``
    keeps only their sum for resize_concat (``in_channels``), so they are read off the maps the backbone ``net``
    returns on a 64x64 probe input, taken at ``in_index``; None where those do not add up to ``in_channels``."""
    widths, index = getattr(head, "in_channels", None), getattr(head, "in_index", None)
    first = probe.first_conv(net)
    if not isinstance(widths, int) or not isinstance(index, (list, tuple)) or first is None:
        return None
    try:
        with torch.no_grad():
            maps = net(probe.probe_input(net, first.in_channels, (64, 64), seed=0))
        found = [maps[i].shape[1] for i in index]
    except (RuntimeError, TypeError, ValueError, IndexError, AttributeError):
        return None
    return found if sum(found) == widths else None


def _layout(head: nn.Module, widths: Optional[List[int]]) -> Optional[str]:
    """Why ``head`` (reading maps of ``widths`` channels) is not a resize_concat FCNHead with one 1x1 ConvModule,
    or None when it is."""
    if getattr(head, "input_transform", None) != "resize_concat":
        return "not an input_transform='resize_concat' decode head"
    if widths is None:
        return (f"in_channels {getattr(head, 'in_channels', None)!r} is not the channels of the backbone's maps at "
                f"in_index {getattr(head, 'in_index', None)!r} added up")
    if tuple(getattr(head, "in_index", ())) != tuple(range(len(widths))):
        return f"in_index {getattr(head, 'in_index', None)} does not take every branch in order"
    if not isinstance(getattr(head, "align_corners", None), bool) or getattr(head, "concat_input", False):
        return "align_corners is not a bool, or concat_input is set"
    convs, classifier = getattr(head, "convs", None), getattr(head, "conv_seg", None)
    if not (isinstance(convs, nn.Sequential) and len(convs) == 1 and _conv_module(convs[0])
            and convs[0].conv.in_channels == sum(widths)):
        return "convs is not one ConvModule(1x1 conv over the concatenated branches, BN, ReLU)"
    if not isinstance(classifier, nn.Conv2d):
        return "conv_seg is not a conv"
    dropout = getattr(head, "dropout", None)
    if not (dropout is None or isinstance(dropout, (nn.Dropout, nn.Dropout2d))):
        return f"dropout is a {type(dropout).__name__}"
    return None


def _behaves(head: nn.Module, widths: List[int]) -> bool:
    """Whether ``head``'s forward on branch maps of 9x7, 5x4, 3x2, 2x1 is the resize_concat composition."""
    xs = [probe.probe_input(head, c, s, seed=i) for i, (c, s) in enumerate(zip(widths, probe.branch_sizes(len(widths))))]
    cm = head.convs[0]
    size = xs[0].shape[-2:]
    try:
        reference = [head(list(xs))]
        cat = torch.cat([F.interpolate(x, size=size, mode="bilinear", align_corners=head.align_corners) for x in xs], 1)
        composed = [head.conv_seg(cm.activate(getattr(cm, cm.norm_name)(cm.conv(cat))))]
    except (RuntimeError, TypeError, ValueError, IndexError, AttributeError):
        return False
    return probe.same(composed, reference)


def fuse_decode_head(rw: Rewriter, model: nn.Module, net: nn.Module) -> None:
    """Replaces ``model.decode_head`` in place by its ``FusedSegHead`` where it is the head above over the HRNet
    ``net``'s branch maps; else reports why (nothing to do when ``model`` has no ``decode_head``)."""
    head = getattr(model, PATH, None)
    if head is None:
        return
    widths = branch_widths(net, head)
    why = _layout(head, widths)
    if why is None and not _behaves(head, widths):
        why = "its forward is not resize_concat -> convs -> conv_seg"
    if why is not None:
        rw.report.skip(PATH, "segmentation head", f"{why}; its convs are fused one by one")
        return
    cm = head.convs[0]
    fused = fused_seg_head(rw, (f"{PATH}.convs.0.conv", f"{PATH}.conv_seg", PATH), cm.conv,
                                         getattr(cm, cm.norm_name), head.conv_seg, widths,
                                         head.align_corners)
    setattr(model, PATH, fused)
