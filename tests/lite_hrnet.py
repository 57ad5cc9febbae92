"""mmpose's Lite-HRNet (``mmpose/models/backbones/litehrnet.py``, mmpose 1.x; config
``configs/body_2d_keypoint/topdown_heatmap/coco/td-hm_litehrnet-18_8xb64-210e_coco-256x192.py``), written for the
tests with the same attribute names, state-dict keys and forward behaviour, and its ``module_type='LITE'`` blocks:

- ``Stem``: ``conv1`` (3x3 s2 ConvModule + BN + ReLU), the map split in two channel halves: ``branch1`` (depthwise
  3x3 s2 + BN, then 1x1 + BN + ReLU) on one, ``expand_conv`` (1x1 + BN + ReLU), ``depthwise_conv`` (3x3 s2 + BN),
  ``linear_conv`` (1x1 + BN + ReLU) on the other, concatenated and channel-shuffled.
- ``ConditionalChannelWeighting``: each branch split in channel halves; one half goes through
  ``cross_resolution_weighting`` (every branch adaptive-avg-pooled to the smallest one's size, concatenated, 1x1
  ConvModule + BN + ReLU, 1x1 ConvModule + BN + Sigmoid, split back and each weight nearest-resized onto its branch
  and multiplied), ``depthwise_convs`` (3x3 + BN) and ``spatial_weighting`` (global average pool, 1x1 conv with
  bias + ReLU, 1x1 conv with bias + Sigmoid, multiplied), then concatenated with the other half and
  channel-shuffled.
- ``LiteHRModule``: ``layers`` (the weighting blocks), ``fuse_layers`` (upsampled terms ``Sequential(1x1 conv, BN,
  nn.Upsample(nearest))``, downsampled ones chains of ``Sequential(depthwise 3x3 s2, BN, 1x1, BN[, ReLU])``) and
  ``relu``. Its forward sums as mmpose's does: ``y`` starts from branch 0's map itself for output 0 and adds it
  again in place (so that map, read again by the other outputs, holds output 0's sum by then), and from term
  ``fuse_layers[i][0]`` for the other outputs, which then add that term a second time.
- ``transition0..2``: ModuleLists of ``Sequential(depthwise 3x3, BN, 1x1, BN, ReLU)`` (None where a branch passes
  through), new branches from the last one with stride 2.
- ``head_layer`` (``IterativeHead``): from the lowest branch up, the previous output resized bilinearly
  (align_corners=True) and added, then a ``DepthwiseSeparableConvModule`` (mmcv
  ``mmcv/cnn/bricks/depthwise_separable_conv_module.py``: ``depthwise_conv`` 3x3 + BN, ``pointwise_conv`` 1x1 + BN +
  ReLU); the forward returns ``(x[0],)``.
``LiteHRNetPose`` puts mmpose's ``HeatmapHead`` (``final_layer`` 1x1 conv with bias, no deconvolutions) on it.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcv_bricks import ConvModule

LITE_HRNET_18 = dict(stem=dict(stem_channels=32, out_channels=32, expand_ratio=1), num_stages=3,
                     stages_spec=dict(num_modules=(2, 4, 2), num_branches=(2, 3, 4), num_blocks=(2, 2, 2),
                                      reduce_ratios=(8, 8, 8),
                                      num_channels=((40, 80), (40, 80, 160), (40, 80, 160, 320))))


def channel_shuffle(x, groups):
    n, c, h, w = x.size()
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


def _dw(c, stride):
    return [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c)]


def _pw(cin, cout):
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]


class SpatialWeighting(nn.Module):
    def __init__(self, channels, ratio):
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = ConvModule(channels, int(channels / ratio), 1, norm=False, act=nn.ReLU())
        self.conv2 = ConvModule(int(channels / ratio), channels, 1, norm=False, act=nn.Sigmoid())

    def forward(self, x):
        return x * self.conv2(self.conv1(self.global_avgpool(x)))


class CrossResolutionWeighting(nn.Module):
    def __init__(self, channels, ratio):
        super().__init__()
        self.channels = channels
        total = sum(channels)
        self.conv1 = ConvModule(total, int(total / ratio), 1, act=nn.ReLU())
        self.conv2 = ConvModule(int(total / ratio), total, 1, act=nn.Sigmoid())

    def forward(self, x):
        mini_size = x[-1].size()[-2:]
        out = torch.cat([F.adaptive_avg_pool2d(s, mini_size) for s in x[:-1]] + [x[-1]], dim=1)
        out = torch.split(self.conv2(self.conv1(out)), self.channels, dim=1)
        return [s * F.interpolate(a, size=s.size()[-2:], mode="nearest") for s, a in zip(x, out)]


class ConditionalChannelWeighting(nn.Module):
    def __init__(self, in_channels, reduce_ratio):
        super().__init__()
        half = [c // 2 for c in in_channels]
        self.cross_resolution_weighting = CrossResolutionWeighting(half, reduce_ratio)
        self.depthwise_convs = nn.ModuleList(ConvModule(c, c, 3, 1, 1, groups=c) for c in half)
        self.spatial_weighting = nn.ModuleList(SpatialWeighting(c, 4) for c in half)

    def forward(self, x):
        halves = [s.chunk(2, dim=1) for s in x]
        x2 = self.cross_resolution_weighting([s[1] for s in halves])
        x2 = [sw(dw(s)) for s, dw, sw in zip(x2, self.depthwise_convs, self.spatial_weighting)]
        return [channel_shuffle(torch.cat([s[0], s2], dim=1), 2) for s, s2 in zip(halves, x2)]


class Stem(nn.Module):
    def __init__(self, in_channels, stem_channels, out_channels, expand_ratio):
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = ConvModule(in_channels, stem_channels, 3, 2, 1, act=nn.ReLU())
        mid = int(round(stem_channels * expand_ratio))
        branch = stem_channels // 2
        inc = out_channels - branch if stem_channels == out_channels else out_channels - stem_channels
        self.branch1 = nn.Sequential(ConvModule(branch, branch, 3, 2, 1, groups=branch),
                                     ConvModule(branch, inc, 1, act=nn.ReLU()))
        self.expand_conv = ConvModule(branch, mid, 1, act=nn.ReLU())
        self.depthwise_conv = ConvModule(mid, mid, 3, 2, 1, groups=mid)
        self.linear_conv = ConvModule(mid, branch if stem_channels == out_channels else stem_channels, 1,
                                      act=nn.ReLU())

    def forward(self, x):
        x1, x2 = self.conv1(x).chunk(2, dim=1)
        x2 = self.linear_conv(self.depthwise_conv(self.expand_conv(x2)))
        return channel_shuffle(torch.cat((self.branch1(x1), x2), dim=1), 2)


class LiteHRModule(nn.Module):
    def __init__(self, num_branches, num_blocks, in_channels, reduce_ratio):
        super().__init__()
        self.in_channels = in_channels
        self.num_branches = num_branches
        self.layers = nn.Sequential(*(ConditionalChannelWeighting(in_channels, reduce_ratio)
                                      for _ in range(num_blocks)))
        self.fuse_layers = self._make_fuse_layers()
        self.relu = nn.ReLU()

    def _make_fuse_layers(self):
        ch = self.in_channels
        rows = []
        for i in range(self.num_branches):
            row = []
            for j in range(self.num_branches):
                if j > i:
                    row.append(nn.Sequential(*_pw(ch[j], ch[i]), nn.Upsample(scale_factor=2 ** (j - i),
                                                                              mode="nearest")))
                elif j == i:
                    row.append(None)
                else:
                    steps = []
                    for k in range(i - j):
                        if k == i - j - 1:
                            steps.append(nn.Sequential(*_dw(ch[j], 2), *_pw(ch[j], ch[i])))
                        else:
                            steps.append(nn.Sequential(*_dw(ch[j], 2), *_pw(ch[j], ch[j]), nn.ReLU(inplace=True)))
                    row.append(nn.Sequential(*steps))
            rows.append(nn.ModuleList(row))
        return nn.ModuleList(rows)

    def forward(self, x):
        out = self.layers(x)
        out_fuse = []
        for i in range(len(self.fuse_layers)):
            y = out[0] if i == 0 else self.fuse_layers[i][0](out[0])
            for j in range(self.num_branches):
                if i == j:
                    y += out[j]
                else:
                    y += self.fuse_layers[i][j](out[j])
            out_fuse.append(self.relu(y))
        return out_fuse


class IterativeHead(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.in_channels = in_channels[::-1]
        n = len(self.in_channels)
        self.projects = nn.ModuleList(DepthwiseSeparableConvModule(
            self.in_channels[i], self.in_channels[i + 1] if i != n - 1 else self.in_channels[i]) for i in range(n))

    def forward(self, x):
        y, last = [], None
        for i, s in enumerate(x[::-1]):
            if last is not None:
                s = s + F.interpolate(last, size=s.size()[-2:], mode="bilinear", align_corners=True)
            last = self.projects[i](s)
            y.append(last)
        return y[::-1]


class DepthwiseSeparableConvModule(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.depthwise_conv = ConvModule(in_channels, in_channels, 3, 1, 1, groups=in_channels)
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, act=nn.ReLU())

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


def _transition(pre, cur):
    layers = []
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(nn.Sequential(*_dw(pre[i], 1), *_pw(pre[i], c), nn.ReLU()) if c != pre[i] else None)
        else:
            steps = [nn.Sequential(*_dw(pre[-1], 2), *_pw(pre[-1], c if j == i - len(pre) else pre[-1]), nn.ReLU())
                     for j in range(i + 1 - len(pre))]
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


class LiteHRNet(nn.Module):
    def __init__(self, extra=LITE_HRNET_18, in_channels=3):
        super().__init__()
        self.stem = Stem(in_channels, **extra["stem"])
        self.num_stages = extra["num_stages"]
        self.stages_spec = spec = extra["stages_spec"]
        last = [self.stem.out_channels]
        for i in range(self.num_stages):
            channels = list(spec["num_channels"][i])
            setattr(self, f"transition{i}", _transition(last, channels))
            setattr(self, f"stage{i}", nn.Sequential(*(
                LiteHRModule(spec["num_branches"][i], spec["num_blocks"][i], channels, spec["reduce_ratios"][i])
                for _ in range(spec["num_modules"][i]))))
            last = channels
        self.head_layer = IterativeHead(last)

    def forward(self, x):
        y_list = [self.stem(x)]
        for i in range(self.num_stages):
            transition = getattr(self, f"transition{i}")
            x_list = []
            for j in range(self.stages_spec["num_branches"][i]):
                if transition[j]:
                    x_list.append(transition[j](y_list[-1] if j >= len(y_list) else y_list[j]))
                else:
                    x_list.append(y_list[j])
            y_list = getattr(self, f"stage{i}")(x_list)
        return (self.head_layer(y_list)[0],)


class LiteHRNetPose(nn.Module):
    """mmpose's ``TopdownPoseEstimator`` in tensor mode: the backbone, then ``HeatmapHead.final_layer``."""

    def __init__(self, extra=LITE_HRNET_18, num_joints=17):
        super().__init__()
        self.backbone = LiteHRNet(extra)
        width = extra["stages_spec"]["num_channels"][-1][0]
        self.head = nn.Module()
        self.head.final_layer = nn.Conv2d(width, num_joints, 1)

    def forward(self, x):
        return self.head.final_layer(self.backbone(x)[0])


def converted_lite_pair():
    """(Lite-HRNet-18 with BN calibrated at 64x64, in eval mode; its ``convert()``-ed copy): the pair the tests
    compare."""
    import hrnet_fast
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(LiteHRNetPose(LITE_HRNET_18), (64, 64), steps=2, batch=2).eval()
    return model, hrnet_fast.convert(model)
