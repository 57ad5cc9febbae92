"""An HRNet laid out the way mmpretrain builds it (ImageClassifier: HRNet backbone, HRFuseScales + global pool
neck, LinearClsHead), with mmpretrain's module names and forward control flow, built from a reference model's
modules. mmpretrain itself needs mmcv's compiled ops, so tests use this stand-in to check that ``convert()``
recognises that structure.
"""
import torch
import torch.nn as nn


class ConvModule(nn.Module):
    """mmcv's ConvModule: conv, a norm layer named by ``norm_name``, an optional activation, in ``order``."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        self.conv = seq[0]
        self.norm_name = "bn"
        self.add_module("bn", seq[1])
        self.activate = seq[2] if len(seq) > 2 else None
        self.order = ("conv", "norm", "act")

    def forward(self, x, activate=True, norm=True):
        x = self.conv(x)
        if norm:
            x = self.bn(x)
        if activate and self.activate is not None:
            x = self.activate(x)
        return x


class HRModule(nn.Module):
    """mmpretrain's HRModule: ``None`` on the fuse diagonal, ``relu`` after each fused sum."""

    def __init__(self, ref):
        super().__init__()
        self.num_branches = ref.num_branches
        self.branches = ref.branches
        self.fuse_layers = None
        if self.num_branches > 1:
            self.fuse_layers = nn.ModuleList(
                nn.ModuleList(None if i == j else f for j, f in enumerate(terms))
                for i, terms in enumerate(ref.fuse_layers))
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        for i in range(self.num_branches):
            x[i] = self.branches[i](x[i])
        out = []
        for i in range(len(self.fuse_layers)):
            y = 0
            for j in range(self.num_branches):
                y = y + (x[j] if i == j else self.fuse_layers[i][j](x[j]))
            out.append(self.relu(y))
        return out


class HRNetBackbone(nn.Module):
    def __init__(self, ref):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = ref.conv1, ref.bn1, ref.conv2, ref.bn2
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = ref.layer1
        for n in (1, 2, 3):
            t = getattr(ref, f"transition{n}")
            setattr(self, f"transition{n}", nn.ModuleList(None if isinstance(m, nn.Identity) else m for m in t))
            setattr(self, f"stage{n + 1}", nn.Sequential(*(HRModule(m) for m in getattr(ref, f"stage{n + 1}"))))

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for n in (1, 2, 3):
            transition = getattr(self, f"transition{n}")
            xs = [xs[i] if t is None else t(xs[-1]) for i, t in enumerate(transition)]
            xs = getattr(self, f"stage{n + 1}")(xs)
        return tuple(xs)


class HRFuseScales(nn.Module):
    def __init__(self, ref):
        super().__init__()
        self.increase_layers = ref.incre_modules
        self.downsample_layers = nn.ModuleList(ConvModule(m) for m in ref.downsamp_modules)
        self.final_layer = ConvModule(ref.final_layer)

    def forward(self, x):
        feat = self.increase_layers[0](x[0])
        for i in range(len(self.downsample_layers)):
            feat = self.downsample_layers[i](feat) + self.increase_layers[i + 1](x[i + 1])
        return (self.final_layer(feat),)


class GlobalAveragePooling(nn.Module):
    def forward(self, x):
        return tuple(torch.flatten(nn.functional.adaptive_avg_pool2d(t, 1), 1) for t in x)


class LinearClsHead(nn.Module):
    def __init__(self, fc):
        super().__init__()
        self.fc = fc

    def forward(self, feats):
        return self.fc(feats[-1])


class ImageClassifier(nn.Module):
    def __init__(self, ref):
        super().__init__()
        self.backbone = HRNetBackbone(ref)
        self.neck = nn.Sequential(HRFuseScales(ref), GlobalAveragePooling())
        self.head = LinearClsHead(ref.classifier)

    def forward(self, inputs, data_samples=None, mode="tensor"):
        return self.head(self.neck(self.backbone(inputs)))
