"""The HRNet backbone shared by every task model, in plain PyTorch.

HRNet (Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition") keeps a
high-resolution branch through the whole network and adds lower-resolution branches stage by stage:

    stem (two 3x3 stride-2 conv+BN+ReLU, /4)
    layer1       one branch of Bottleneck blocks
    transitionN  new branches (3x3 stride-2 convs) and channel changes
    stageN       HighResolutionModules: per-branch BasicBlocks, then the multi-resolution fusion
                 y_i = relu(sum_j f_ij(x_j)), f_ij = upsample(BN(conv1x1)) for j > i, identity for j == i,
                 a chain of 3x3 stride-2 conv+BN(+ReLU) for j < i

The task heads live beside it: ``classification.py`` (incre modules, pooled linear classifier), ``pose.py``
(1x1 conv to joint heatmaps) and ``segmentation.py`` (HRNetV2: all branches resized bilinearly, concatenated,
1x1 conv+BN+ReLU, 1x1 conv to classes). Task models subclass :class:`HRNetBackbone`, so their state_dict keys
are flat (``conv1.weight``, ``stage4.2.fuse_layers.0.1.0.weight`` …) as in the official repositories and timm,
and their checkpoints load with ``strict=True``. These modules are the definition of correct for every fused path.

Two fusion variants exist. Classification and pose upsample with ``nn.Upsample(nearest, 2**(j-i))`` (each branch
exactly half the one above, so inputs are multiples of 32). Segmentation resizes every upsampled term bilinearly
to the exact size of its target branch (:class:`BilinearResize`), so any input size works.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN, residual add, ReLU (ResNet basic block)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) conv+BN, residual add, ReLU (ResNet bottleneck)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act3(y + shortcut)


BLOCKS = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def conv_bn(cin: int, cout: int, kernel: int, stride: int, relu: bool, bias: bool = False) -> nn.Sequential:
    """Sequential(conv, BN[, ReLU]): indices 0, 1(, 2) as in the official state_dict keys."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=bias), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def make_layer(block: type, inplanes: int, planes: int, num_blocks: int, stride: int = 1) -> nn.Sequential:
    """A run of residual blocks; the first gets a 1x1 conv+BN shortcut when the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = conv_bn(inplanes, planes * block.expansion, 1, stride, relu=False)
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


class BilinearResize(nn.Module):
    """Bilinear interpolation of a map to a size given at call time (``F.interpolate(size=...)``), the upsampling
    of the segmentation model's fusions and head. A module, not a bare function call, so that ``profile`` counts
    it and ``convert()`` reads ``align_corners`` from the model's structure; it has no parameters (no keys)."""

    def __init__(self, align_corners: bool):
        super().__init__()
        self.align_corners = bool(align_corners)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"align_corners={self.align_corners}"


class HighResolutionModule(nn.Module):
    """Parallel branches of residual blocks followed by the multi-resolution fusion.

    ``multi_scale_output=False`` fuses to the highest-resolution branch only (the last module of the pose
    model). ``resize`` set (a :class:`BilinearResize`) makes each upsampled term ``resize(BN(conv1x1(x_j)),
    size of x_i)`` instead of ``Upsample(nearest)(BN(conv1x1(x_j)))``: the term is then ``Sequential(conv, BN)``,
    as in the official segmentation model (same keys either way).
    """

    def __init__(self, block: type, num_blocks: Sequence[int], in_channels: Sequence[int],
                 channels: Sequence[int], multi_scale_output: bool = True, resize: Optional[BilinearResize] = None):
        super().__init__()
        self.num_branches = n = len(channels)
        self.branches = nn.ModuleList(
            make_layer(block, in_channels[i], channels[i], num_blocks[i]) for i in range(n))
        out = [c * block.expansion for c in channels]
        self.out_channels = out if multi_scale_output else out[:1]
        self.resize = resize
        if n == 1:
            self.fuse_layers = nn.Identity()
        else:
            self.fuse_layers = nn.ModuleList(
                nn.ModuleList(self._fuse_term(out, i, j) for j in range(n))
                for i in range(n if multi_scale_output else 1))
        self.fuse_act = nn.ReLU(inplace=False)

    def _fuse_term(self, ch: Sequence[int], i: int, j: int) -> nn.Module:
        """f_ij: brings branch j to branch i's resolution and channel count."""
        if j > i:
            up = [nn.Conv2d(ch[j], ch[i], 1, 1, 0, bias=False), nn.BatchNorm2d(ch[i])]
            if self.resize is None:
                up.append(nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"))
            return nn.Sequential(*up)
        if j == i:
            return nn.Identity()
        # i - j stride-2 3x3 convs; all but the last keep branch j's channels and end in ReLU.
        steps = [conv_bn(ch[j], ch[j], 3, 2, relu=True) for _ in range(i - j - 1)]
        steps.append(conv_bn(ch[j], ch[i], 3, 2, relu=False))
        return nn.Sequential(*steps)

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.num_branches == 1:
            return xs
        out = []
        for i, terms in enumerate(self.fuse_layers):
            y = terms[0](xs[0])  # identity (i == 0) or a downsampling chain: never resized
            for j, (f, x) in enumerate(zip(terms[1:], xs[1:]), start=1):
                t = f(x)
                if self.resize is not None and j > i:
                    t = self.resize(t, xs[i].shape[-2:])
                y = y + t
            out.append(self.fuse_act(y))
        return out


class Stage(nn.Sequential):
    """A sequence of HighResolutionModules over a list of branch tensors (``nn.Sequential``'s forward passes the
    list from one to the next)."""


def make_transition(prev: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """Adapts the previous stage's branches to the next: channel changes, and new lower-resolution
    branches made from the last one by 3x3 stride-2 conv+BN+ReLU steps."""
    layers: List[nn.Module] = []
    for i, c in enumerate(cur):
        if i < len(prev):
            layers.append(conv_bn(prev[i], c, 3, 1, relu=True) if prev[i] != c else nn.Identity())
        else:
            steps = [conv_bn(prev[-1], c if k == i - len(prev) else prev[-1], 3, 2, relu=True)
                     for k in range(i + 1 - len(prev))]
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


class HRNetBackbone(nn.Module):
    """Stem, layer1, transitions and stages 2-4 of HRNet: ``features(x)`` returns the stage-4 branch outputs.

    Args:
        cfg: a stage layout (``hrnet_fast.registry.CONFIGS`` and the pose/segmentation tables).
        in_chans: input channels.
        multi_scale_output: False fuses the last stage-4 module to branch 0 only (pose).
        resize: a :class:`BilinearResize` for the segmentation fusion, or None for nearest upsampling.
    """

    def __init__(self, cfg: Dict, in_chans: int = 3, multi_scale_output: bool = True,
                 resize: Optional[BilinearResize] = None):
        super().__init__()
        self.in_chans = in_chans
        stem = cfg["stem_width"]
        self.conv1 = nn.Conv2d(in_chans, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(stem, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = nn.ReLU(inplace=True)

        s1 = cfg["stage1"]
        block = BLOCKS[s1["block_type"]]
        self.layer1 = make_layer(block, 64, s1["num_channels"][0], s1["num_blocks"][0])
        channels = [s1["num_channels"][0] * block.expansion]
        for n in (2, 3, 4):
            s = cfg[f"stage{n}"]
            block = BLOCKS[s["block_type"]]
            cur = [c * block.expansion for c in s["num_channels"]]
            setattr(self, f"transition{n - 1}", make_transition(channels, cur))
            modules = []
            for m in range(s["num_modules"]):
                last = n == 4 and m == s["num_modules"] - 1
                modules.append(HighResolutionModule(block, s["num_blocks"], cur, s["num_channels"],
                                                    multi_scale_output=multi_scale_output or not last,
                                                    resize=resize))
                cur = modules[-1].out_channels
            setattr(self, f"stage{n}", Stage(*modules))
            channels = cur
        self.stage_channels = channels

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_rank_and_channels(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"HRNet expects a 4-D NCHW image batch, got a {x.dim()}-D tensor of shape "
                             f"{tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"HRNet was built for {self.in_chans} input channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")

    def check_input(self, x: torch.Tensor) -> None:
        """Raises a clear error for inputs the architecture cannot take (nearest fusion: multiples of 32)."""
        self.check_rank_and_channels(x)
        check_input_size(x.shape[-2], x.shape[-1])

    def stem(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(stride-2 stem feature, stride-4 input of layer1)."""
        s = self.act1(self.bn1(self.conv1(x)))
        return s, self.act2(self.bn2(self.conv2(s)))

    def stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        xs = [t(x) for t in self.transition1]
        xs = self.stage2(xs)
        xs = [xs[i] if isinstance(t, nn.Identity) else t(xs[-1]) for i, t in enumerate(self.transition2)]
        xs = self.stage3(xs)
        xs = [xs[i] if isinstance(t, nn.Identity) else t(xs[-1]) for i, t in enumerate(self.transition3)]
        return self.stage4(xs)

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The stage-4 branch outputs (one, at stride 4, when the last module is not multi-scale)."""
        return self.stages(self.layer1(self.stem(x)[1]))


def branch_sizes(h: int, w: int, num_branches: int = 4) -> List[Tuple[int, int]]:
    """Spatial size of each branch for an input of h x w (stem: two stride-2 3x3 convs, padding 1)."""
    def down(n: int) -> int:
        return (n - 1) // 2 + 1
    sizes = [(down(down(h)), down(down(w)))]
    for _ in range(num_branches - 1):
        sizes.append((down(sizes[-1][0]), down(sizes[-1][1])))
    return sizes


def check_input_size(h: int, w: int) -> None:
    """HRNet adds nearest-upsampled low-resolution branches to high-resolution ones, so each branch must be
    exactly half the size of the one above: the stem output (ceil(ceil(n/2)/2)) must be a multiple of 8."""
    sizes = branch_sizes(h, w)
    if h > 0 and w > 0 and sizes[0][0] % 8 == 0 and sizes[0][1] % 8 == 0:
        return
    def nearest(n: int) -> int:
        return max(32, 32 * round(n / 32))
    raise ValueError(
        f"HRNet cannot take a {h}x{w} input: its branches would be {sizes}, and nearest upsampling by 2/4/8 "
        f"cannot align them. Height and width must give a stem output (ceil(ceil(n/2)/2)) divisible by 8, "
        f"e.g. multiples of 32 such as {nearest(h)}x{nearest(w)}.")
