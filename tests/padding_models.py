"""Models for the channel-padding tests: W18-like tiny HRNets of every family, and a way to make a model's whole
forward exact in float32.

Exact arithmetic: with every conv weight in {-1, 0, 1}, every bias an integer, BatchNorm folded to an integer
scale and bias (eps = 0, running_var = 1, integer gamma, beta and mean: ``w * gamma / sqrt(1 + 0)`` is exact) and
an integer image, every activation is an integer. float32 represents integers up to 2**24 exactly, so as long as
no partial sum reaches 2**24 every sum is exact in any order: the padded and the unpadded model must then agree
bit for bit, whatever order their kernels sum in. ``exactness_bound`` measures the largest partial sum any conv
or Linear can form (its largest input times its weights' largest L1 norm, plus its bias), which the tests check
is below 2**24. The classification head's average pool divides by the last map's pixel count (a power of two
here), so the Linear reads multiples of 1/4: still exact at these magnitudes.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
import torch.nn as nn

from hrnet_fast.models import HighResolutionNet, PoseHighResolutionNet, SegHighResolutionNet
from hrnet_fast.registry import _stage

# W18's branch widths (18/36/72/144, all but 72 and 144 off a multiple of 8), one module of one block per stage,
# a stem of 20 channels (padded too, and returned by features_only models).
W18_TINY = dict(stem_width=20,
                stage1=_stage(1, (1,), (16,), "BOTTLENECK"),
                stage2=_stage(1, (1, 1), (18, 36)),
                stage3=_stage(1, (1, 1, 1), (18, 36, 72)),
                stage4=_stage(1, (1, 1, 1, 1), (18, 36, 72, 144)))
# BN's eps and running variance sum to exactly 1 (both are exact in float32), so BN scales by exactly gamma.
EPS = 2.0 ** -10
NONZERO, GAMMA = 2.0, 1
SIZE = (64, 64)  # branches of 16, 8, 4, 2 pixels: nearest upsampling by 2/4/8 aligns them exactly


def timm_cfg(cfg: Dict) -> Dict:
    """``cfg`` in timm's layout (each stage also names its fuse method)."""
    return {k: (dict(v, fuse_method="SUM") if isinstance(v, dict) else v) for k, v in cfg.items()}


def tiny_models() -> Dict[str, nn.Module]:
    """One W18-like tiny model of each family, freshly initialised (random weights, BN at its defaults), in eval
    mode."""
    from timm.models.hrnet import HighResolutionNet as TimmHRNet, HighResolutionNetFeatures
    torch.manual_seed(0)
    models = {
        "classification": HighResolutionNet(W18_TINY, num_classes=10),
        "features": HighResolutionNet(W18_TINY, features_only=True, feature_location=""),
        "features incre": HighResolutionNet(W18_TINY, features_only=True),
        "timm classification": TimmHRNet(timm_cfg(W18_TINY), num_classes=10),
        "timm features": HighResolutionNetFeatures(timm_cfg(W18_TINY), feature_location=""),
        "pose": PoseHighResolutionNet(W18_TINY, num_joints=17),
        "segmentation": SegHighResolutionNet(W18_TINY, num_classes=19, align_corners=False),
    }
    return {name: model.eval() for name, model in models.items()}


def _ternary(shape, fan_in: int, gen: torch.Generator) -> torch.Tensor:
    """Weights in {-1, 0, 1}, about NONZERO nonzero per output: activations neither vanish nor grow past 2**24."""
    keep = torch.rand(shape, generator=gen) < min(1.0, NONZERO / fan_in)
    sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
    return (keep * sign).float()


def make_integer_valued(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` (in eval mode) with integer weights and BN that folds exactly (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(_ternary(m.weight.shape, m.weight[0].numel(), gen))
                if m.bias is not None:
                    m.bias.copy_(torch.randint(-1, 2, m.bias.shape, generator=gen).float())
            elif isinstance(m, nn.BatchNorm2d):
                m.eps = EPS
                m.running_var.fill_(1.0 - EPS)
                m.running_mean.copy_(torch.randint(-1, 2, m.running_mean.shape, generator=gen).float())
                m.weight.copy_(torch.randint(1, GAMMA + 1, m.weight.shape, generator=gen).float())
                m.bias.copy_(torch.randint(-1, 2, m.bias.shape, generator=gen).float())
    return model.eval()


def zero_resized_terms(model: SegHighResolutionNet) -> SegHighResolutionNet:
    """Zeroes what a segmentation model resizes bilinearly (the fusions' upsampled terms, the head's weights on
    branches 1..3): bilinear weights are fractions, and over several fusions their products need more mantissa
    than float32 has, so the exact comparison keeps the resized maps at zero (the float32 comparison covers them)."""
    with torch.no_grad():
        for m in model.modules():
            fuse_layers = getattr(m, "fuse_layers", None)
            if isinstance(fuse_layers, nn.ModuleList):
                for i, terms in enumerate(fuse_layers):
                    for j, term in enumerate(terms):
                        if j > i:
                            term[0].weight.zero_()
        model.last_layer[0].weight[:, model.stage_channels[0]:].zero_()
    return model


def image(size=SIZE, batch: int = 2, seed: int = 1, integer: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if integer:
        return torch.randint(0, 4, (batch, 3, *size), generator=gen).float()
    return torch.randn(batch, 3, *size, generator=gen)


def exactness_bound(model: nn.Module, x: torch.Tensor) -> float:
    """The largest partial sum (in magnitude) any conv or Linear of ``model`` can form on ``x``, measured in
    float64; asserts every conv's input (where a nonzero weight reads it) is an integer and every Linear's a
    multiple of 1/4."""
    bound = 0.0

    def check(m, args):
        nonlocal bound
        used = m.weight.abs().reshape(*m.weight.shape[:2], -1).sum((0, 2)) != 0  # input channels some weight reads
        t = args[0][:, used]
        if not t.numel():
            return
        step = 4.0 if isinstance(m, nn.Linear) else 1.0
        assert torch.equal((t * step).round(), t * step), f"{type(m).__name__} reads non-integer values"
        l1 = m.weight.abs().flatten(1).sum(1).max().item()
        bound = max(bound, t.abs().max().item() * l1 + (m.bias.abs().max().item() if m.bias is not None else 0))

    reference = copy.deepcopy(model).double()
    for m in reference.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_pre_hook(check)
    with torch.no_grad():
        reference(x.double())
    return bound
