"""convert() over OpenMMLab's HRNet structures, built from the tests' own equivalents (``mmseg_hrnet.py``,
``lite_hrnet.py``): recognised by structure and behaviour, not by class.

mmsegmentation's FCN-HRNet with SyncBN: every conv of backbone and head fused, the fusions' resize modules
(bilinear ``Upsample`` then the forward's resize) inside ``multires_fuse`` where the branches halve exactly and
composed as the module does where they do not, the FCNHead fused as the HRNetV2 head. Lite-HRNet, which torch.fx
cannot trace: every conv -> BN (-> ReLU) inside its blocks fused, module by module, with the report naming each
module that could not be traced and why. Outputs are compared with the model's own eager forward (tolerance.py)."""
import pytest
import torch
import torch.nn as nn

import hrnet_fast
from bn_forms import replace_batchnorms
from hrnet_fast.convert.fused import FoldedConv, FusedConvBNAct, FusedHRFuse
from hrnet_fast.convert.lite_rules import SHUFFLE
from hrnet_fast.ops.folding import is_batchnorm
from lite_hrnet import converted_lite_pair
from mmseg_hrnet import EncoderDecoder, Upsample
from official_hrnet import extra
from tolerance import assert_model_matches

pytestmark = pytest.mark.usefixtures("one_thread")


def pixel_classes(y):
    return y.argmax(1)


def heatmap_peaks(y):
    return y.flatten(2).argmax(-1)


def image(*size, batch=2):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(sum(size)))


def mmseg_fcn_hrnet(num_classes=5) -> nn.Module:
    """FCN-HRNet (W18-small v1 stages, so the test stays small) with SyncBN, calibrated."""
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(EncoderDecoder(extra(18, "v1"), num_classes), (64, 64), steps=2, batch=2)
    return replace_batchnorms(model, "SyncBatchNorm").eval()


def _unfused_convs_and_bns(fast: nn.Module):
    """Convs outside the fused modules and BNs anywhere: what a fully fused model has none of."""
    left = []
    for name, m in fast.named_modules():
        if is_batchnorm(m) or (isinstance(m, nn.Conv2d) and not any(
                isinstance(p, (FusedConvBNAct, FoldedConv)) and name.startswith(f"{pn}.")
                for pn, p in fast.named_modules())):
            left.append(name)
    return left


@pytest.fixture(scope="module")
def mmseg_pair():
    model = mmseg_fcn_hrnet()
    return model, hrnet_fast.convert(model)


def test_mmseg_fcn_hrnet_with_syncbn_is_fused_whole(mmseg_pair):
    model, fast = mmseg_pair
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    report = fast.fusion_report()
    assert not report.unfused, str(report)
    assert not _unfused_convs_and_bns(fast)
    fuses = [m for m in fast.modules() if isinstance(m, FusedHRFuse)]
    n_modules = sum(len(getattr(model.backbone, f"stage{k}")) for k in (2, 3, 4))
    assert len([e for e in report.fused if e.pattern == "hr fuse"]) == len(fuses) == sum(
        len(m.fuse_layers) for m in model.modules() if getattr(m, "fuse_layers", None) is not None) > n_modules
    assert all(f.mode == "bilinear" and not f.align_corners and f.resizers is not None for f in fuses if f.up_src)
    assert [e.path for e in report.fused if e.pattern == "segmentation head"] == ["decode_head"]


@pytest.mark.parametrize("size", [(64, 128), (72, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_mmseg_fcn_hrnet_matches_at_halving_and_other_sizes(mmseg_pair, size):
    """64x128: every branch exactly half the one above (one bilinear upsample per term inside multires_fuse); 72x40
    (branches 18x10, 9x5, 5x3, 3x2): the resize modules and the forward's resize composed as mmseg does."""
    model, fast = mmseg_pair
    (y,) = assert_model_matches(model, fast, image(*size), decision=pixel_classes)
    assert y.shape[-2:] == ((size[0] + 3) // 4, (size[1] + 3) // 4)


class _NotWhatItSays(Upsample):
    """Claims bilinear in its attributes but resizes by nearest neighbour."""

    def forward(self, x):
        return nn.functional.interpolate(x, scale_factor=self.scale_factor, mode="nearest")


def test_resize_module_that_does_not_do_what_its_attributes_say_stays_eager():
    model = mmseg_fcn_hrnet()
    module = model.backbone.stage2[0]
    module.fuse_layers[0][1][2] = _NotWhatItSays(scale_factor=2, mode="bilinear", align_corners=False)
    fast = hrnet_fast.convert(model)
    reasons = [e for e in fast.fusion_report().unfused if e.path.startswith("backbone.stage2.0.fuse_layers")]
    assert reasons and "does not upsample as F.interpolate" in reasons[0].detail, str(fast.fusion_report())
    assert_model_matches(model, fast, image(64, 64), decision=pixel_classes)


def test_decode_head_that_is_not_resize_concat_is_fused_conv_by_conv():
    model = mmseg_fcn_hrnet()
    model.decode_head.in_index = (0, 1, 2, 3)[::-1]  # the concatenation now starts from branch 3's size
    head = model.decode_head
    head.convs[0].conv = nn.Conv2d(head.channels, head.channels, 1, bias=False)  # same width, any order
    fast = hrnet_fast.convert(model)
    report = fast.fusion_report()
    assert any(e.path == "decode_head" and "in_index" in e.detail for e in report.unfused), str(report)
    assert any(e.path == "decode_head.convs.0" and e.pattern == "conv+bn+relu" for e in report.fused)
    assert_model_matches(model, fast, image(64, 64), decision=pixel_classes)


def test_decode_head_whose_in_channels_are_not_the_backbone_maps_is_fused_conv_by_conv():
    """mmseg keeps a resize_concat head's in_channels as one sum: the branch widths come from the backbone's maps,
    and a head that reads other widths than it says is not split over them."""
    model = mmseg_fcn_hrnet()
    model.decode_head.in_channels += 1
    said = f"in_channels {model.decode_head.in_channels} is not the channels of the backbone's maps"
    fast = hrnet_fast.convert(model)
    report = fast.fusion_report()
    assert any(e.path == "decode_head" and said in e.detail for e in report.unfused), str(report)
    assert any(e.path == "decode_head.convs.0" and e.pattern == "conv+bn+relu" for e in report.fused)
    assert_model_matches(model, fast, image(64, 64), decision=pixel_classes)


@pytest.fixture(scope="module")
def lite_pair():
    return converted_lite_pair()


def test_lite_hrnet_18_every_conv_bn_fused_inside_its_blocks(lite_pair):
    model, fast = lite_pair
    report = fast.fusion_report()
    assert not _unfused_convs_and_bns(fast)
    counts = report.counts()
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert sum(n for pattern, n in counts.items() if pattern != SHUFFLE) == n_convs, counts
    # Each weighting block and the stem: their concatenation and channel shuffle as one copy (lite_rules.py).
    shuffling = [m for m in model.modules() if type(m).__name__ in ("ConditionalChannelWeighting", "Stem")]
    assert counts[SHUFFLE] == len(shuffling) == 17
    depthwise = sum(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())
    assert counts["depthwise conv+bn"] + counts["depthwise conv+bn+relu"] == depthwise
    # What is left runs as is: the weighting's pools and sigmoids, the fusions' nearest upsampling, and the modules
    # torch.fx could not trace, each named with the reason.
    left = {e.pattern for e in report.unfused}
    assert left == {"Sigmoid", "AdaptiveAvgPool2d", "Upsample", "torch.fx trace"}, str(report)
    untraced = {e.path: e.detail for e in report.unfused if e.pattern == "torch.fx trace"}
    assert list(untraced) == [""] and untraced[""].startswith("LiteHRNetPose: TraceError"), untraced


def test_lite_hrnet_18_matches(lite_pair):
    model, fast = lite_pair
    (y,) = assert_model_matches(model, fast, image(64, 64), decision=heatmap_peaks)
    assert y.shape == (2, 17, 16, 16)


class _Residual(nn.Module):
    """conv -> BN -> + x -> ReLU: traceable on its own."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + x)


class _Gated(nn.Module):
    """Control flow on a traced value (torch.fx cannot trace it) around a traceable child and a ModuleList called
    entry by entry."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.body = _Residual(c)
        self.heads = nn.ModuleList(nn.Conv2d(c, 2, 1) for _ in range(2))

    def forward(self, x):
        y = self.body(self.stem(x))
        return self.heads[0](y) if y.mean() > 0 else self.heads[1](y)


def test_untraceable_model_is_fused_module_by_module():
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(_Gated(), (16, 16), steps=2, batch=2).eval()
    fast = hrnet_fast.convert(model)
    report = fast.fusion_report()
    assert [(e.path, e.pattern) for e in report.unfused] == [("", "torch.fx trace")], str(report)
    assert "_Gated: TraceError" in report.unfused[0].detail
    fused = {(e.path, e.pattern) for e in report.fused}
    assert {("stem", "conv+bn+relu"), ("body.conv", "conv+bn+add+relu"), ("heads.0", "conv"),
            ("heads.1", "conv")} == fused
    assert_model_matches(model, fast, image(16, 16))
