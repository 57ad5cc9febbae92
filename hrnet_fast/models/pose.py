"""Top-down pose estimation HRNet (deep-high-resolution-net.pytorch's ``PoseHighResolutionNet``; mmpose's
``HRNet`` backbone + ``HeatmapHead`` without deconvolutions).

The shared backbone, with the last stage-4 module fusing to the highest-resolution branch only (the official
``multi_scale_output=False``), then ``final_layer``: a 1x1 conv with bias to ``num_joints`` heatmaps at
stride 4 (64x48 for a 256x192 crop). Keys are the official ones (``final_layer.weight``/``.bias``), so
``pose_hrnet_w32_256x192.pth`` loads with ``strict=True``.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn

from .backbone import HRNetBackbone


class PoseHighResolutionNet(HRNetBackbone):
    """HRNet pose estimator: ``forward(x)`` returns [N, num_joints, H/4, W/4] heatmaps."""

    task = "pose"

    def __init__(self, cfg: Dict, num_joints: int = 17, in_chans: int = 3):
        super().__init__(cfg, in_chans, multi_scale_output=False)
        self.num_joints = self.num_classes = num_joints  # num_classes: the name timm-style code reads
        self.num_features = self.stage_channels[0]  # channels into the heatmap conv
        self.final_layer = nn.Conv2d(self.stage_channels[0], num_joints, 1, 1, 0)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.final_layer(self.features(x)[0])
