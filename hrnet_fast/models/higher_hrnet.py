"""Bottom-up pose estimation HigherHRNet (Cheng et al., "HigherHRNet: Scale-Aware Representation Learning for
Bottom-Up Human Pose Estimation"; HigherHRNet-Human-Pose-Estimation's ``PoseHigherResolutionNet``).

The shared backbone, its last stage-4 module fusing to the highest-resolution branch only (as the top-down pose
model), then two heads read by the one ``forward``:

    final_layers.0   1x1 conv (bias) on branch 0: joint heatmaps + associative-embedding tags at stride 4
                     (17 + 17 channels for COCO: the official configs' TAG_PER_JOINT and WITH_AE_LOSS[0])
    deconv_layers.0  Sequential(Sequential(ConvTranspose2d 4x4 stride 2, BN, ReLU), Sequential(BasicBlock) x 4)
                     on cat(branch 0, final_layers.0's output) (CAT_OUTPUT): stride 2
    final_layers.1   1x1 conv (bias): heatmaps at stride 2 (17 channels: WITH_AE_LOSS[1] is False)

``forward`` returns the official list ``[stride-4 heatmaps + tags, stride-2 heatmaps]`` (a 512x512 image: 34 x
128x128 and 17 x 256x256). Keys are the official ones (``final_layers.1.weight``, ``deconv_layers.0.0.0.weight``,
``deconv_layers.0.1.0.conv1.weight`` …), so ``pose_higher_hrnet_w32_512.pth`` loads with ``strict=True``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .backbone import BasicBlock, HRNetBackbone

# The official DECONV._get_deconv_cfg: (padding, output_padding) per kernel, so that each deconv doubles the size.
DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}


def deconv_stage(cin: int, cout: int, kernel: int, num_blocks: int) -> nn.Sequential:
    """One deconv stage: Sequential(ConvTranspose2d (no bias) + BN + ReLU), then ``num_blocks`` BasicBlocks, each
    in a Sequential of its own (indices as in the official keys: ``.0.0`` the deconv, ``.{k}.0`` block k)."""
    if kernel not in DECONV_PADDING:
        raise ValueError(f"deconv kernel must be one of {sorted(DECONV_PADDING)} (a 2x upsampling), got {kernel}")
    padding, output_padding = DECONV_PADDING[kernel]
    up = nn.Sequential(nn.ConvTranspose2d(cin, cout, kernel, 2, padding, output_padding, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
    return nn.Sequential(up, *(nn.Sequential(BasicBlock(cout, cout)) for _ in range(num_blocks)))


class PoseHigherResolutionNet(HRNetBackbone):
    """HigherHRNet: ``forward(x)`` returns ``[heatmaps + tags at stride 4, heatmaps at stride 2, …]``.

    Args:
        cfg: a stage layout (``hrnet_fast.registry.CONFIGS``).
        num_joints: heatmap channels per output.
        tag_per_joint: one tag map per joint (True, the official configs) or one for all.
        with_ae: per output (1 + number of deconvs), whether it carries the tag maps (official: True, False).
        deconv_channels: output channels of each deconv stage (official: the branch-0 width).
        deconv_kernel: the ConvTranspose2d kernel (4, 3 or 2; official: 4).
        num_basic_blocks: BasicBlocks after each deconv (official: 4).
        cat_output: per deconv, whether its input is cat(features, previous output) (official: True).
        final_conv_kernel: kernel of the output convs (1 or 3; official: 1).
    """

    task = "bottom-up pose"

    def __init__(self, cfg: Dict, num_joints: int = 17, in_chans: int = 3, tag_per_joint: bool = True,
                 with_ae: Sequence[bool] = (True, False), deconv_channels: Optional[Sequence[int]] = None,
                 deconv_kernel: int = 4, num_basic_blocks: int = 4, cat_output: Optional[Sequence[bool]] = None,
                 final_conv_kernel: int = 1):
        super().__init__(cfg, in_chans, multi_scale_output=False)
        width = self.stage_channels[0]
        deconv_channels = list(deconv_channels) if deconv_channels is not None else [width] * (len(with_ae) - 1)
        cat_output = list(cat_output) if cat_output is not None else [True] * len(deconv_channels)
        if len(with_ae) != len(deconv_channels) + 1 or len(cat_output) != len(deconv_channels):
            raise ValueError(f"with_ae needs one entry per output (1 + {len(deconv_channels)} deconvs) and "
                             f"cat_output one per deconv; got {list(with_ae)} and {cat_output}")
        if final_conv_kernel not in (1, 3):
            raise ValueError(f"final_conv_kernel must be 1 or 3, got {final_conv_kernel}")
        self.num_joints = self.num_classes = num_joints  # num_classes: the name timm-style code reads
        self.num_features = width  # channels into the first output conv
        self.cat_output = tuple(bool(c) for c in cat_output)
        tags = num_joints if tag_per_joint else 1
        outputs = [num_joints + tags if ae else num_joints for ae in with_ae]
        self.final_layers = nn.ModuleList(
            nn.Conv2d(c, n, final_conv_kernel, 1, final_conv_kernel // 2)
            for c, n in zip([width] + deconv_channels, outputs))
        stages, cin = [], width
        for i, cout in enumerate(deconv_channels):
            stages.append(deconv_stage(cin + (outputs[i] if self.cat_output[i] else 0), cout, deconv_kernel,
                                       num_basic_blocks))
            cin = cout
        self.deconv_layers = nn.ModuleList(stages)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        self.check_input(x)
        x = self.features(x)[0]
        y = self.final_layers[0](x)
        outputs = [y]
        for cat, deconv, final in zip(self.cat_output, self.deconv_layers, self.final_layers[1:]):
            x = deconv(torch.cat((x, y), 1) if cat else x)
            y = final(x)
            outputs.append(y)
        return outputs
