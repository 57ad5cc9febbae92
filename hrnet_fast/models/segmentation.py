"""HRNetV2 semantic segmentation (HRNet-Semantic-Segmentation's ``seg_hrnet``; mmsegmentation's ``HRNet`` +
``FCNHead`` with ``resize_concat``, the ``fcn_hr18/hr48`` models).

The shared backbone with all four branches out of stage 4, every fusion resizing its upsampled terms bilinearly
to the exact size of the target branch (so any input size works: 520x520 gives branches of 130, 65, 33, 17), then

    head        branches 1..3 resized bilinearly to branch 0's size, concatenated (sum of branch widths)
    last_layer  1x1 conv (bias) -> BN -> ReLU -> 1x1 conv (bias) to num_classes, logits at stride 4

Keys are the official ones (``last_layer.0/1/3``). ``align_corners`` applies to every resize: True is the
official repository's default, False its Cityscapes, LIP and PASCAL-Context configs' and mmsegmentation's (which,
where each branch is exactly half the one above, equals its ``Upsample(scale_factor=2**k)`` followed by a resize to
the target size). No state dict records it: ``load_checkpoint`` checks it where the format fixes it
(``checkpoints/conventions.py``).
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn as nn

from .backbone import BilinearResize, HRNetBackbone, branch_sizes


class SegHighResolutionNet(HRNetBackbone):
    """HRNetV2 segmenter: ``forward(x)`` returns [N, num_classes, ceil(H/4), ceil(W/4)] logits."""

    task = "segmentation"

    def __init__(self, cfg: Dict, num_classes: int = 19, in_chans: int = 3, align_corners: bool = True):
        resize = BilinearResize(align_corners)
        super().__init__(cfg, in_chans, multi_scale_output=True, resize=resize)
        self.num_classes = num_classes
        self.align_corners = resize.align_corners
        self.head_resize = resize
        width = self.num_features = sum(self.stage_channels)  # the concatenated branches, and last_layer's width
        self.last_layer = nn.Sequential(
            nn.Conv2d(width, width, 1, 1, 0), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1, 1, 0))
        self.init_weights()

    def check_input(self, x: torch.Tensor) -> None:
        """Any size the stride-2 convolutions can shrink to four branches of at least one pixel."""
        self.check_rank_and_channels(x)
        h, w = x.shape[-2:]
        if h < 1 or w < 1:
            raise ValueError(f"HRNetV2 cannot take a {h}x{w} input: height and width must be at least 1 "
                             f"(branches would be {branch_sizes(h, w)})")

    def head_input(self, xs: List[torch.Tensor]) -> torch.Tensor:
        """The concatenation of every branch resized to branch 0's size."""
        size = xs[0].shape[-2:]
        return torch.cat([xs[0]] + [self.head_resize(x, size) for x in xs[1:]], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.last_layer(self.head_input(self.features(x)))
