"""Rewriting an HRNet-structured model in place (``rewrite_hrnet``): finds the backbone (``find_hrnet``), runs the
part-by-part ``Rewriter`` (``rewriter.py``) over it, and fuses the segmentation head (``heads.py``)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from . import probe
from .decode_heads import fuse_decode_head
from ..ops.folding import is_foldable_bn
from .heads import FusedSegmentation, official_segmentation_widths, segmentation_head, split_head
from .report import FusionReport
from .rewriter import Rewriter, norm
from .walk import fuse_rest


def is_hrnet(m: nn.Module) -> bool:
    """HRNet layout: stem conv1/bn1/conv2/bn2, layer1, transition1..3, stage2..4."""
    return all(hasattr(m, a) for a in ("conv1", "conv2", "layer1", "transition1", "stage2", "stage3", "stage4")) \
        and all(is_foldable_bn(norm(m, k)) for k in (1, 2))


def find_hrnet(model: nn.Module) -> Tuple[str, Optional[nn.Module]]:
    """(path, module) of the HRNet backbone: the model itself (ours, timm, official) or its ``backbone``
    (mmpretrain's ImageClassifier, mmsegmentation's EncoderDecoder, mmpose's TopdownPoseEstimator)."""
    if is_hrnet(model):
        return "", model
    backbone = getattr(model, "backbone", None)
    if backbone is not None and is_hrnet(backbone):
        return "backbone.", backbone
    return "", None


def rewrite_hrnet(model: nn.Module, dtype: torch.dtype, backend: Optional[str],
                  report: FusionReport) -> Optional[nn.Module]:
    """Rewrites an HRNet-structured model in place and returns the module to run: the model itself, or (a
    segmentation HRNet) a wrapper running its backbone and its algebraically fused head. None if ``model`` is not
    an HRNet."""
    prefix, net = find_hrnet(model)
    if net is None:
        return None
    rw = Rewriter(dtype, backend, report)
    # An official-layout segmentation model resizes in its forward: probe how, before anything is rewritten.
    official_widths = official_segmentation_widths(net) if net is model else None
    official_align_corners = probe.segmentation_align_corners(net) if official_widths else None
    if official_widths and official_align_corners is None:
        report.skip("last_layer", "segmentation head", "the model's forward does not compute last_layer over branch 0 "
                    "and branches 1..3 resized bilinearly to it")
    if net is not model:  # an HRNet inside another model: mmsegmentation's EncoderDecoder has its decode_head
        fuse_decode_head(rw, model, net)  # first: it may run the backbone as given to learn the branch widths
    rw.stem(prefix, net)
    seg_head = segmentation_head(rw, net) if net is model else None
    if seg_head is None and official_align_corners is not None:
        seg_head = split_head(rw, net, official_widths, official_align_corners)
    rw.children("", model)
    fuse_rest(rw, "", model)  # the head's conv -> BN -> ReLU chains the HRNet rules do not know
    return model if seg_head is None else FusedSegmentation(model, seg_head,
                                                            official_layout=official_align_corners is not None)
