"""HRNetV2 + OCR semantic segmentation (Yuan et al., "Object-Contextual Representations for Semantic
Segmentation"; HRNet-Semantic-Segmentation's HRNet-OCR branch, ``seg_hrnet_ocr.HighResolutionNet``).

The HRNetV2 backbone and head input (``segmentation.py``: every branch resized bilinearly to branch 0's size and
concatenated, 720 channels for W48), then

    aux_head         1x1 conv (bias) -> BN -> ReLU -> 1x1 conv: soft object regions (class logits), returned too
    conv3x3_ocr      3x3 conv (bias) -> BN -> ReLU to 512 channels: the pixel representation
    ocr_gather_head  per class, the softmax-over-pixels weighted sum of the pixel representation (object regions)
    ocr_distri_head  object attention: queries f_pixel(pixels), keys f_object(regions), values f_down(regions),
                     softmax(q k / sqrt(256)) v, f_up back to 512; then conv_bn_dropout on cat(context, pixels)
    cls_head         1x1 conv (bias) to the classes

``forward`` returns the official pair ``[aux logits, logits]``, both at stride 4. The attention's convs are 1x1
conv -> ``Sequential(BN, ReLU)`` (the official ``ModuleHelper.BNReLU``), so the keys are the official ones
(``ocr_distri_head.object_context_block.f_pixel.1.0.weight`` …) and ``hrnet_ocr_cs_8162_torch11.pth`` loads with
``strict=True`` (its ``model.`` FullModel prefix and ``loss.*`` entries are unwrapped by ``load_checkpoint``). The
official model uses SyncBatchNorm (plain BatchNorm in eval, same keys); ``align_corners`` as in ``segmentation.py``:
True is the official default, which none of its OCR configs changes.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn as nn

from .backbone import BilinearResize, HRNetBackbone
from .segmentation import SegHighResolutionNet

OCR_MID_CHANNELS = 512   # MODEL.OCR.MID_CHANNELS
OCR_KEY_CHANNELS = 256   # MODEL.OCR.KEY_CHANNELS
OCR_DROPOUT = 0.05       # the official model's SpatialOCR_Module dropout (an identity at inference)


def conv1x1_bn_relu(cin: int, cout: int) -> List[nn.Module]:
    """A bias-free 1x1 conv followed by ``Sequential(BN, ReLU)``: two entries of a Sequential."""
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU())]


class SpatialGather(nn.Module):
    """Object region representations: for each class k, ``sum_p softmax_p(scale * probs[k, p]) * feats[:, p]``.
    Returns [N, C, K, 1] from feats [N, C, H, W] and probs [N, K, H, W]; no parameters."""

    def __init__(self, cls_num: int, scale: float = 1.0):
        super().__init__()
        self.cls_num = cls_num
        self.scale = scale

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.scale * probs.flatten(2), dim=2)    # [N, K, HW]
        regions = torch.matmul(weights, feats.flatten(2).transpose(1, 2))  # [N, K, C]
        return regions.transpose(1, 2).unsqueeze(3)


class ObjectAttention(nn.Module):
    """Pixel-region attention (the official ``ObjectAttentionBlock2D`` at scale 1): queries from the pixels, keys
    and values from the object regions, each a 1x1 conv-BN-ReLU stack, ``softmax(q k^T / sqrt(key_channels)) v``,
    then ``f_up`` back to the pixels' width. [N, C, H, W], [N, C, K, 1] -> [N, C, H, W]."""

    def __init__(self, in_channels: int, key_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.key_channels = key_channels
        self.scale = 1
        self.f_pixel = nn.Sequential(*conv1x1_bn_relu(in_channels, key_channels),
                                     *conv1x1_bn_relu(key_channels, key_channels))
        self.f_object = nn.Sequential(*conv1x1_bn_relu(in_channels, key_channels),
                                      *conv1x1_bn_relu(key_channels, key_channels))
        self.f_down = nn.Sequential(*conv1x1_bn_relu(in_channels, key_channels))
        self.f_up = nn.Sequential(*conv1x1_bn_relu(key_channels, in_channels))

    def forward(self, x: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        query = self.f_pixel(x).flatten(2).transpose(1, 2)        # [N, HW, Ck]
        key = self.f_object(proxy).flatten(2)                     # [N, Ck, K]
        value = self.f_down(proxy).flatten(2).transpose(1, 2)     # [N, K, Ck]
        sim = torch.softmax(torch.matmul(query, key) * self.key_channels ** -0.5, dim=-1)
        context = torch.matmul(sim, value).transpose(1, 2).reshape(n, self.key_channels, h, w)
        return self.f_up(context)


class SpatialOCR(nn.Module):
    """The OCR distribution head: object context for every pixel, then 1x1 conv-BN-ReLU (+ dropout) over
    cat(context, pixels)."""

    def __init__(self, in_channels: int, key_channels: int, out_channels: int, dropout: float = OCR_DROPOUT):
        super().__init__()
        self.object_context_block = ObjectAttention(in_channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(*conv1x1_bn_relu(2 * in_channels, out_channels), nn.Dropout2d(dropout))

    def forward(self, feats: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(feats, proxy)
        return self.conv_bn_dropout(torch.cat([context, feats], 1))


class SegHRNetOCR(HRNetBackbone):
    """HRNetV2 + OCR segmenter: ``forward(x)`` returns ``[aux logits, logits]``, each [N, num_classes, ceil(H/4),
    ceil(W/4)]."""

    task = "OCR segmentation"
    # The same backbone input checks and head input (every branch resized to branch 0 and concatenated).
    check_input = SegHighResolutionNet.check_input
    head_input = SegHighResolutionNet.head_input

    def __init__(self, cfg: Dict, num_classes: int = 19, in_chans: int = 3, align_corners: bool = True,
                 mid_channels: int = OCR_MID_CHANNELS, key_channels: int = OCR_KEY_CHANNELS):
        resize = BilinearResize(align_corners)
        super().__init__(cfg, in_chans, multi_scale_output=True, resize=resize)
        self.num_classes = num_classes
        self.align_corners = resize.align_corners
        self.head_resize = resize
        width = sum(self.stage_channels)
        self.num_features = mid_channels  # what cls_head reads
        self.conv3x3_ocr = nn.Sequential(nn.Conv2d(width, mid_channels, 3, 1, 1), nn.BatchNorm2d(mid_channels),
                                         nn.ReLU(inplace=True))
        self.ocr_gather_head = SpatialGather(num_classes)
        self.ocr_distri_head = SpatialOCR(mid_channels, key_channels, mid_channels)
        self.cls_head = nn.Conv2d(mid_channels, num_classes, 1)
        self.aux_head = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.Conv2d(width, num_classes, 1))
        self.init_weights()

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        self.check_input(x)
        feats = self.head_input(self.features(x))
        aux = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        feats = self.ocr_distri_head(feats, self.ocr_gather_head(feats, aux))
        return [aux, self.cls_head(feats)]
