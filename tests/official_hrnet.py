"""Independent constructions of the official pose and segmentation HRNets, written the way
deep-high-resolution-net.pytorch (``lib/models/pose_hrnet.py``) and HRNet-Semantic-Segmentation
(``lib/models/seg_hrnet.py``) build them: ``None`` for absent transitions and diagonal fusion terms, one shared
``relu``, stage configs as dicts of upper-case keys, the fusion's bilinear ``F.interpolate(size=...)`` in the
forward (segmentation) and the head's interpolate + cat. Tests compare the library's models against these (keys,
shapes, parameter counts, outputs) and convert them.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


BLOCKS = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


class HighResolutionModule(nn.Module):
    def __init__(self, num_branches, block, num_blocks, num_inchannels, num_channels, multi_scale_output,
                 bilinear, align_corners):
        super().__init__()
        self.num_inchannels = list(num_inchannels)
        self.num_branches = num_branches
        self.multi_scale_output = multi_scale_output
        self.bilinear = bilinear
        self.align_corners = align_corners
        self.branches = nn.ModuleList(
            self._make_one_branch(i, block, num_blocks, num_channels) for i in range(num_branches))
        self.fuse_layers = self._make_fuse_layers()
        self.relu = nn.ReLU(True)

    def _make_one_branch(self, i, block, num_blocks, num_channels):
        downsample = None
        if self.num_inchannels[i] != num_channels[i] * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.num_inchannels[i], num_channels[i] * block.expansion, 1, 1, bias=False),
                nn.BatchNorm2d(num_channels[i] * block.expansion))
        layers = [block(self.num_inchannels[i], num_channels[i], 1, downsample)]
        self.num_inchannels[i] = num_channels[i] * block.expansion
        layers += [block(self.num_inchannels[i], num_channels[i]) for _ in range(1, num_blocks[i])]
        return nn.Sequential(*layers)

    def _make_fuse_layers(self):
        if self.num_branches == 1:
            return None
        ch = self.num_inchannels
        fuse_layers = []
        for i in range(self.num_branches if self.multi_scale_output else 1):
            fuse_layer = []
            for j in range(self.num_branches):
                if j > i:
                    up = [nn.Conv2d(ch[j], ch[i], 1, 1, 0, bias=False), nn.BatchNorm2d(ch[i])]
                    if not self.bilinear:
                        up.append(nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"))
                    fuse_layer.append(nn.Sequential(*up))
                elif j == i:
                    fuse_layer.append(None)
                else:
                    conv3x3s = []
                    for k in range(i - j):
                        if k == i - j - 1:
                            conv3x3s.append(nn.Sequential(nn.Conv2d(ch[j], ch[i], 3, 2, 1, bias=False),
                                                          nn.BatchNorm2d(ch[i])))
                        else:
                            conv3x3s.append(nn.Sequential(nn.Conv2d(ch[j], ch[j], 3, 2, 1, bias=False),
                                                          nn.BatchNorm2d(ch[j]), nn.ReLU(True)))
                    fuse_layer.append(nn.Sequential(*conv3x3s))
            fuse_layers.append(nn.ModuleList(fuse_layer))
        return nn.ModuleList(fuse_layers)

    def forward(self, x):
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        for i in range(self.num_branches):
            x[i] = self.branches[i](x[i])
        x_fuse = []
        for i in range(len(self.fuse_layers)):
            y = x[0] if i == 0 else self.fuse_layers[i][0](x[0])
            for j in range(1, self.num_branches):
                if i == j:
                    y = y + x[j]
                elif j > i and self.bilinear:
                    y = y + F.interpolate(self.fuse_layers[i][j](x[j]), size=x[i].shape[-2:], mode="bilinear",
                                          align_corners=self.align_corners)
                else:
                    y = y + self.fuse_layers[i][j](x[j])
            x_fuse.append(self.relu(y))
        return x_fuse


class OfficialHRNet(nn.Module):
    """``task="pose"``: PoseHighResolutionNet (final_layer to ``num_outputs`` joints); ``task="segmentation"``:
    seg_hrnet's HighResolutionNet (last_layer to ``num_outputs`` classes)."""

    def __init__(self, extra, task, num_outputs, align_corners=True):
        super().__init__()
        self.task = task
        self.align_corners = align_corners
        bilinear = task == "segmentation"
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        s1 = extra["STAGE1"]
        block = BLOCKS[s1["BLOCK"]]
        self.layer1 = self._make_layer(block, 64, s1["NUM_CHANNELS"][0], s1["NUM_BLOCKS"][0])
        pre = [s1["NUM_CHANNELS"][0] * block.expansion]
        self.stage_cfgs = []
        for n in (2, 3, 4):
            cfg = extra[f"STAGE{n}"]
            block = BLOCKS[cfg["BLOCK"]]
            cur = [c * block.expansion for c in cfg["NUM_CHANNELS"]]
            setattr(self, f"transition{n - 1}", self._make_transition_layer(pre, cur))
            multi_scale = not (n == 4 and task == "pose")
            modules = []
            for m in range(cfg["NUM_MODULES"]):
                reset = multi_scale or m != cfg["NUM_MODULES"] - 1
                modules.append(HighResolutionModule(len(cur), block, cfg["NUM_BLOCKS"], cur, cfg["NUM_CHANNELS"],
                                                    reset, bilinear, align_corners))
                cur = modules[-1].num_inchannels
            setattr(self, f"stage{n}", nn.Sequential(*modules))
            self.stage_cfgs.append(cfg)
            pre = cur
        if task == "pose":
            self.final_layer = nn.Conv2d(pre[0], num_outputs, 1, 1, 0)
        else:
            last = sum(pre)
            self.last_layer = nn.Sequential(nn.Conv2d(last, last, 1, 1, 0), nn.BatchNorm2d(last), nn.ReLU(True),
                                            nn.Conv2d(last, num_outputs, 1, 1, 0))

    @staticmethod
    def _make_transition_layer(pre, cur):
        layers = []
        for i in range(len(cur)):
            if i < len(pre):
                if cur[i] != pre[i]:
                    layers.append(nn.Sequential(nn.Conv2d(pre[i], cur[i], 3, 1, 1, bias=False),
                                                nn.BatchNorm2d(cur[i]), nn.ReLU(True)))
                else:
                    layers.append(None)
            else:
                convs = []
                for j in range(i + 1 - len(pre)):
                    out = cur[i] if j == i - len(pre) else pre[-1]
                    convs.append(nn.Sequential(nn.Conv2d(pre[-1], out, 3, 2, 1, bias=False), nn.BatchNorm2d(out),
                                               nn.ReLU(True)))
                layers.append(nn.Sequential(*convs))
        return nn.ModuleList(layers)

    @staticmethod
    def _make_layer(block, inplanes, planes, blocks):
        downsample = None
        if inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, 1, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(inplanes, planes, 1, downsample)]
        layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        y_list = [self.layer1(x)]
        for n, cfg in zip((2, 3, 4), self.stage_cfgs):
            transition = getattr(self, f"transition{n - 1}")
            x_list = []
            for i in range(len(cfg["NUM_CHANNELS"])):
                if transition[i] is not None:
                    x_list.append(transition[i](y_list[-1]))
                else:
                    x_list.append(y_list[i])
            y_list = getattr(self, f"stage{n}")(x_list)
        if self.task == "pose":
            return self.final_layer(y_list[0])
        h, w = y_list[0].shape[-2:]
        ups = [F.interpolate(t, size=(h, w), mode="bilinear", align_corners=self.align_corners) for t in y_list[1:]]
        return self.last_layer(torch.cat([y_list[0]] + ups, 1))


def extra(width, small=None):
    """The EXTRA section of the official configs: W18/W32/W48 (``small=None``), or the W18-small v1/v2 ones."""
    c = [width * 2 ** i for i in range(4)]
    if small == "v1":
        c = [16, 32, 64, 128]
        mods, blocks, stem_blocks, stem_ch = (1, 1, 1), 2, 1, 32
    elif small == "v2":
        mods, blocks, stem_blocks, stem_ch = (1, 3, 2), 2, 2, 64
    else:
        mods, blocks, stem_blocks, stem_ch = (1, 4, 3), 4, 4, 64

    def stage(n, m):
        return dict(NUM_MODULES=m, NUM_BRANCHES=n, BLOCK="BASIC", NUM_BLOCKS=[blocks] * n, NUM_CHANNELS=c[:n],
                    FUSE_METHOD="SUM")
    return dict(STAGE1=dict(NUM_MODULES=1, NUM_BRANCHES=1, BLOCK="BOTTLENECK", NUM_BLOCKS=[stem_blocks],
                            NUM_CHANNELS=[stem_ch], FUSE_METHOD="SUM"),
                STAGE2=stage(2, mods[0]), STAGE3=stage(3, mods[1]), STAGE4=stage(4, mods[2]))
