"""HRNet for ImageNet classification (HRNet-Image-Classification, timm): the shared backbone, then

    incre_modules     one Bottleneck per branch to 128/256/512/1024 channels
    downsamp_modules  3x3 stride-2 conv+BN+ReLU, adding each branch into the next
    final_layer       1x1 conv+BN+ReLU to 2048, global average pool, linear classifier

Module and parameter names follow the official repository and timm, so their checkpoints load with
``strict=True``.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from ..feature_info import FeatureInfo
from .backbone import Bottleneck, HRNetBackbone, conv_bn, make_layer

HEAD_CHANNELS = (32, 64, 128, 256)  # Bottleneck planes of the incre modules (x4 = 128…1024)
NUM_FEATURES = 2048


class HighResolutionNet(HRNetBackbone):
    """HRNet for classification, or (``features_only=True``) a multi-scale feature extractor.

    Args:
        cfg: an entry of :data:`hrnet_fast.registry.CONFIGS` (stage layout).
        num_classes: classifier outputs (0 keeps pooled features).
        in_chans: input channels.
        head_conv_bias: whether the head's downsample/final convs have a bias (False for the ssld weights).
        features_only: return a list of feature maps instead of logits.
        feature_location: ``"incre"`` (default, the incre-module outputs, 128/256/512/1024 channels) or
            ``""`` (the raw stage-4 branch outputs).
        out_indices: which features to return: 0 is the stride-2 stem, 1…4 the four branches.
    """

    task = "classification"

    def __init__(self, cfg: Dict, num_classes: int = 1000, in_chans: int = 3, head_conv_bias: bool = True,
                 features_only: bool = False, feature_location: str = "incre",
                 out_indices: Sequence[int] = (0, 1, 2, 3, 4)):
        if feature_location not in ("incre", ""):
            raise ValueError(f"feature_location must be 'incre' or '', got {feature_location!r}")
        bad = [i for i in out_indices if i not in range(5)]
        if bad:
            raise ValueError(f"out_indices must be within 0..4, got {list(out_indices)}")
        super().__init__(cfg, in_chans)
        self.num_classes = num_classes
        self.features_only = features_only
        self.feature_location = feature_location if features_only else "incre"
        self.out_indices = tuple(out_indices)

        channels = self.stage_channels
        if features_only and feature_location == "":
            self.incre_modules = None
        else:
            self.incre_modules = nn.ModuleList(
                make_layer(Bottleneck, c, HEAD_CHANNELS[i], 1) for i, c in enumerate(channels))
        # timm's contract for feature extractors: channels(), reduction() and module_name() of the maps forward
        # returns when features_only (stem, then the four branches; all five otherwise).
        branch = [c * Bottleneck.expansion for c in HEAD_CHANNELS] if self.incre_modules is not None else channels
        self.feature_info = FeatureInfo(
            [dict(num_chs=c, reduction=2 ** (i + 1), module="stem" if i == 0 else f"stage{i}")
             for i, c in enumerate([self.conv1.out_channels] + list(branch))],
            self.out_indices if features_only else range(1 + len(branch)))
        # Channels of what the classifier sees (the pooled map) or, for a feature extractor, of the last map it
        # returns (timm's features_only models keep a leftover 2048 / 256 that matches no map).
        self.num_features = self.feature_info.channels()[-1] if features_only else NUM_FEATURES
        if not features_only:
            head = [c * Bottleneck.expansion for c in HEAD_CHANNELS]
            self.downsamp_modules = nn.ModuleList(
                conv_bn(head[i], head[i + 1], 3, 2, relu=True, bias=head_conv_bias) for i in range(3))
            self.final_layer = conv_bn(head[3], NUM_FEATURES, 1, 1, relu=True, bias=head_conv_bias)
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(NUM_FEATURES, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @property
    def feature_channels(self) -> List[int]:
        """Channels of each feature map ``forward`` returns when ``features_only``."""
        return self.feature_info.channels(self.out_indices)

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        stem, x = self.stem(x)
        xs = self.stages(self.layer1(x))
        if self.incre_modules is not None:
            xs = [incre(f) for incre, f in zip(self.incre_modules, xs)]
        if self.features_only:
            feats = [stem] + xs
            return [feats[i] for i in self.out_indices]
        y = xs[0]
        for down, f in zip(self.downsamp_modules, xs[1:]):
            y = f + down(y)
        y = self.final_layer(y)
        return self.classifier(torch.flatten(self.global_pool(y), 1))
