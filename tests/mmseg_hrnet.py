"""mmsegmentation's FCN-HRNet (``configs/_base_/models/fcn_hr18.py``: ``EncoderDecoder`` with an ``HRNet`` backbone and
an ``FCNHead``, SyncBN throughout), written for the tests with mmsegmentation 1.x's attribute names, state-dict keys
and forward behaviour:

- ``HRNet`` (``mmseg/models/backbones/hrnet.py``): stem ``conv1``/``bn1``/``conv2``/``bn2`` and one ``relu``,
  ``layer1``, ``transition1..3`` (ModuleLists with None where a branch passes through), ``stage2..4`` of
  ``HRModule``s; its forward returns the four branch maps.
- ``HRModule``: ``branches``, ``fuse_layers`` and ``relu``; an upsampled term is ``Sequential(conv1x1, BN,
  Upsample(scale_factor=2**(j-i), mode='bilinear', align_corners=False))`` and the forward resizes its output once
  more, ``resize(term, size=x[i].shape[2:], mode='bilinear', align_corners=False)``, summing from ``y = 0``.
- ``Upsample`` (``mmseg/models/utils/wrappers.py``): ``size``, ``scale_factor``, ``mode``, ``align_corners``;
  resizes to ``int(t * scale_factor)`` per side.
- ``FCNHead`` (``mmseg/models/decode_heads/fcn_head.py`` over ``decode_head.py``'s ``BaseDecodeHead``) as the
  config builds it: ``in_channels`` [18, 36, 72, 144] (kept as their sum, 270, as ``BaseDecodeHead._init_inputs``
  does for resize_concat), ``in_index`` (0, 1, 2, 3), ``input_transform='resize_concat'``
  (every map resized bilinearly to the first one's size with the head's ``align_corners``, False, and concatenated),
  ``convs`` = Sequential(ConvModule 1x1 -> BN -> ReLU), ``concat_input=False``, ``dropout_ratio=-1`` (``dropout``
  None), ``conv_seg`` 1x1 conv with bias.
The residual blocks are mmseg's ``BasicBlock`` / ``Bottleneck`` (``mmseg/models/backbones/resnet.py``), which have the
official repositories' attribute names and forward (``official_hrnet.py``'s blocks). Built with BatchNorm2d, as
BN statistics are calibrated in train mode; ``bn_forms.replace_batchnorms(model, "SyncBatchNorm")`` then gives the
config's SyncBN.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcv_bricks import ConvModule
from official_hrnet import BLOCKS, OfficialHRNet


class Upsample(nn.Module):
    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None):
        super().__init__()
        self.size = size
        self.scale_factor = float(scale_factor) if scale_factor else None
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x):
        size = self.size or [int(t * self.scale_factor) for t in x.shape[-2:]]
        return F.interpolate(x, size, None, self.mode, self.align_corners)


class HRModule(nn.Module):
    def __init__(self, num_branches, block, num_blocks, in_channels, num_channels, multiscale_output=True):
        super().__init__()
        self.in_channels = list(in_channels)
        self.num_branches = num_branches
        self.multiscale_output = multiscale_output
        self.branches = nn.ModuleList(self._branch(i, block, num_blocks[i], num_channels[i])
                                      for i in range(num_branches))
        self.fuse_layers = self._make_fuse_layers()
        self.relu = nn.ReLU(inplace=False)

    def _branch(self, i, block, blocks, channels):
        downsample = None
        if self.in_channels[i] != channels * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.in_channels[i], channels * block.expansion, 1, bias=False),
                                       nn.BatchNorm2d(channels * block.expansion))
        layers = [block(self.in_channels[i], channels, 1, downsample)]
        self.in_channels[i] = channels * block.expansion
        layers += [block(self.in_channels[i], channels) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _make_fuse_layers(self):
        if self.num_branches == 1:
            return None
        ch = self.in_channels
        rows = []
        for i in range(self.num_branches if self.multiscale_output else 1):
            row = []
            for j in range(self.num_branches):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(ch[j], ch[i], 1, bias=False), nn.BatchNorm2d(ch[i]),
                                             Upsample(scale_factor=2 ** (j - i), mode="bilinear",
                                                      align_corners=False)))
                elif j == i:
                    row.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        out = ch[i] if last else ch[j]
                        step = [nn.Conv2d(ch[j], out, 3, 2, 1, bias=False), nn.BatchNorm2d(out)]
                        steps.append(nn.Sequential(*step) if last else nn.Sequential(*step, nn.ReLU(inplace=False)))
                    row.append(nn.Sequential(*steps))
            rows.append(nn.ModuleList(row))
        return nn.ModuleList(rows)

    def forward(self, x):
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        for i in range(self.num_branches):
            x[i] = self.branches[i](x[i])
        x_fuse = []
        for i in range(len(self.fuse_layers)):
            y = 0
            for j in range(self.num_branches):
                if i == j:
                    y += x[j]
                elif j > i:
                    y = y + F.interpolate(self.fuse_layers[i][j](x[j]), size=x[i].shape[2:], mode="bilinear",
                                          align_corners=False)
                else:
                    y += self.fuse_layers[i][j](x[j])
            x_fuse.append(self.relu(y))
        return x_fuse


class HRNet(nn.Module):
    """``extra``: the backbone's stage settings, as ``official_hrnet.extra`` writes them."""

    def __init__(self, extra):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        s1 = extra["STAGE1"]
        block = BLOCKS[s1["BLOCK"]]
        self.layer1 = OfficialHRNet._make_layer(block, 64, s1["NUM_CHANNELS"][0], s1["NUM_BLOCKS"][0])
        pre = [s1["NUM_CHANNELS"][0] * block.expansion]
        self.branch_counts = []
        for n in (2, 3, 4):
            cfg = extra[f"STAGE{n}"]
            block = BLOCKS[cfg["BLOCK"]]
            cur = [c * block.expansion for c in cfg["NUM_CHANNELS"]]
            setattr(self, f"transition{n - 1}", OfficialHRNet._make_transition_layer(pre, cur))
            modules = []
            for _ in range(cfg["NUM_MODULES"]):
                modules.append(HRModule(len(cur), block, cfg["NUM_BLOCKS"], cur, cfg["NUM_CHANNELS"]))
                cur = modules[-1].in_channels
            setattr(self, f"stage{n}", nn.Sequential(*modules))
            self.branch_counts.append(len(cur))
            pre = cur
        self.out_channels = pre

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        y_list = [self.layer1(x)]
        for n, branches in zip((2, 3, 4), self.branch_counts):
            transition = getattr(self, f"transition{n - 1}")
            x_list = [y_list[i] if transition[i] is None else transition[i](y_list[-1]) for i in range(branches)]
            y_list = getattr(self, f"stage{n}")(x_list)
        return y_list


class FCNHead(nn.Module):
    def __init__(self, in_channels, num_classes, align_corners=False):
        super().__init__()
        self.in_channels = sum(in_channels)  # BaseDecodeHead._init_inputs keeps the sum for resize_concat
        self.in_index = tuple(range(len(in_channels)))
        self.input_transform = "resize_concat"
        self.channels = sum(in_channels)
        self.align_corners = align_corners
        self.concat_input = False
        self.num_classes = num_classes
        self.convs = nn.Sequential(ConvModule(self.channels, self.channels, 1, act=nn.ReLU(inplace=True)))
        self.conv_seg = nn.Conv2d(self.channels, num_classes, 1)
        self.dropout = None

    def _transform_inputs(self, inputs):
        inputs = [inputs[i] for i in self.in_index]
        return torch.cat([F.interpolate(x, size=inputs[0].shape[2:], mode="bilinear", align_corners=self.align_corners)
                          for x in inputs], dim=1)

    def forward(self, inputs):
        feats = self.convs(self._transform_inputs(inputs))
        if self.dropout is not None:
            feats = self.dropout(feats)
        return self.conv_seg(feats)


class EncoderDecoder(nn.Module):
    """``mmseg/models/segmentors/encoder_decoder.py`` in ``mode='tensor'``: the decode head's logits at the first
    branch's resolution (a quarter of the image's)."""

    def __init__(self, extra, num_classes=19):
        super().__init__()
        self.backbone = HRNet(extra)
        self.decode_head = FCNHead(self.backbone.out_channels, num_classes)

    def forward(self, x):
        return self.decode_head(self.backbone(x))
