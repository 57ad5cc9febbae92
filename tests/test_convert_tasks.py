"""convert() over whole pose and segmentation models: backbone and head fused, same heatmap peaks and pixel
classes as the reference, the segmentation head run without a concat or an upsampled copy."""
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hrnet_fast
from hrnet_fast.convert.fused import FusedHRFuse
from hrnet_fast.counting import count_forward
from hrnet_fast.models import PoseHighResolutionNet, SegHighResolutionNet
from hrnet_fast.registry import CONFIGS
from official_hrnet import OfficialHRNet, extra
from tolerance import assert_model_matches


pytestmark = pytest.mark.usefixtures("one_thread")


def calibrated(model, size=(64, 64)):
    torch.manual_seed(0)
    return hrnet_fast.calibrate_bn(model, size, steps=2, batch=2)


def heatmap_peaks(y):
    return y.flatten(2).argmax(-1)  # [N, joints]: the location of each joint's maximum


def pixel_classes(y):
    return y.argmax(1)  # [N, H, W]


def image(*size, batch=1):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(sum(size)))


def test_pose_w32_at_its_crop_size():
    model = calibrated(hrnet_fast.create_model("pose_hrnet_w32"))
    fast = hrnet_fast.convert(model)
    (y,) = assert_model_matches(model, fast, image(256, 192), decision=heatmap_peaks)
    assert y.shape == (1, 17, 64, 48)
    report = fast.fusion_report()
    assert not report.unfused, str(report)
    assert any(e.path == "final_layer" and e.pattern == "conv" for e in report.fused)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("size", [(64, 128), (72, 40), (130, 130)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_segmentation_at_any_size(size, align_corners):
    model = calibrated(hrnet_fast.create_model("seg_hrnetv2_w18_small", align_corners=align_corners))
    fast = hrnet_fast.convert(model)
    (y,) = assert_model_matches(model, fast, image(*size, batch=2), decision=pixel_classes)
    assert y.shape[-2:] == ((size[0] + 3) // 4, (size[1] + 3) // 4)
    assert not fast.fusion_report().unfused, str(fast.fusion_report())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,size,decision", [("pose_hrnet_w32", (64, 64), heatmap_peaks),
                                                ("seg_hrnetv2_w18_small", (72, 40), pixel_classes)],
                         ids=["pose", "seg"])
def test_pose_and_segmentation_in_reduced_precision(name, size, decision, dtype):
    """The whole converted model, head included, in fp16/bf16: within twice eager PyTorch's own error in that dtype
    (against the float64 truth) plus the floor."""
    model = calibrated(hrnet_fast.create_model(name))
    fast = hrnet_fast.convert(model, dtype=dtype)
    (y,) = assert_model_matches(model, fast, image(*size, batch=2), dtype=dtype, decision=decision)
    assert y.dtype == dtype and not fast.fusion_report().unfused, str(fast.fusion_report())


def test_segmentation_w18_at_a_pascal_context_size():
    """520x520: branches of 130, 65, 33, 17 pixels, none an exact multiple of the next."""
    model = calibrated(hrnet_fast.create_model("seg_hrnetv2_w18"))
    assert_model_matches(model, hrnet_fast.convert(model), image(520, 520), decision=pixel_classes)


def test_segmentation_dispatches_no_concat_and_no_upsample():
    model = calibrated(hrnet_fast.create_model("seg_hrnetv2_w18_small"))
    x = image(72, 40)
    reference = count_forward(model, x).by_op
    assert reference["aten.cat.default"] == 1 and reference["aten.upsample_bilinear2d.default"] > 0
    converted = count_forward(hrnet_fast.convert(model), x).by_op
    assert set(converted) <= {"hrnet_fast.conv_bn_act.default", "hrnet_fast.multires_fuse.default",
                              "aten.clone.default"}, converted  # clone: the input laid out channels_last
    # One multires_fuse per fusion output branch of every HR module, and one for the head.
    fusions = sum(len(m.fuse_layers) for m in model.modules() if hasattr(m, "fuse_layers")
                  and isinstance(m.fuse_layers, nn.ModuleList))
    assert converted["hrnet_fast.multires_fuse.default"] == fusions + 1


def test_converted_segmentation_exports_to_the_fused_ops_only():
    """torch.export sees the fused ops' fake kernels: the graph is conv_bn_act and multires_fuse calls only."""
    model = calibrated(hrnet_fast.create_model("seg_hrnetv2_w18_small"))
    fast = hrnet_fast.convert(model)
    x = image(72, 40).contiguous(memory_format=torch.channels_last)
    exported = torch.export.export(fast.inner, (x,))
    assert {str(n.target) for n in exported.graph.nodes if n.op == "call_function"} == {
        "hrnet_fast.conv_bn_act.default", "hrnet_fast.multires_fuse.default"}
    # The exported graph runs the registered ops (ATen's convolution on CPU), the eager converted model its kept
    # oneDNN primitives: two implementations, each held to the rule against the float64 truth.
    with torch.no_grad():
        assert_model_matches(model, exported.module(), x, decision=pixel_classes)
    assert fast.num_classes == 19


def test_segmentation_head_is_split_by_branch():
    model = calibrated(hrnet_fast.create_model("seg_hrnetv2_w18_small"))
    head = hrnet_fast.convert(model).inner.head
    widths = [16, 32, 64, 128]
    assert [s.weight.shape[1] for s in head.slices] == widths
    assert all(s.weight.shape[0] == sum(widths) for s in head.slices)
    assert torch.count_nonzero(head.slices[0].bias) > 0 and all(torch.count_nonzero(s.bias) == 0
                                                                 for s in head.slices[1:])  # bias added once


def test_empty_segmentation_input_is_refused():
    fast = hrnet_fast.convert(calibrated(hrnet_fast.create_model("seg_hrnetv2_w18_small")))
    with pytest.raises(ValueError, match="cannot take a 0x64 input"):
        fast(torch.randn(1, 3, 0, 64))


def test_official_pose_and_segmentation_layouts():
    """Models built the official repositories' way (None entries, shared relu, interpolate in the forward)."""
    pose = calibrated(OfficialHRNet(extra(18, "v1"), "pose", 17))
    fast = hrnet_fast.convert(pose)
    assert_model_matches(pose, fast, image(64, 96), decision=heatmap_peaks)
    assert not fast.fusion_report().unfused, str(fast.fusion_report())


@pytest.mark.parametrize("align_corners", [True, False])
def test_official_segmentation_is_fused_whole(align_corners):
    """The official seg model resizes inside its forwards, with nothing on the modules saying how: convert()
    probes it (``convert/probe.py``), then fuses every HR module's fusion and the head as for our models."""
    seg = calibrated(OfficialHRNet(extra(18, "v1"), "segmentation", 19, align_corners=align_corners))
    x = image(72, 40)  # branches of 18x10, 9x5, 5x3, 3x2: every resize interpolates
    reference = count_forward(seg, x).by_op
    fast = hrnet_fast.convert(seg)
    report = fast.fusion_report()
    assert not report.unfused, str(report)
    assert fast.inner.head.align_corners == align_corners
    assert {m.align_corners for m in fast.modules() if isinstance(m, FusedHRFuse)} == {align_corners}
    assert_model_matches(seg, fast, x, decision=pixel_classes)
    assert reference["aten.cat.default"] == 1 and reference["aten.upsample_bilinear2d.default"] > 0
    converted = count_forward(fast, x).by_op
    assert set(converted) <= {"hrnet_fast.conv_bn_act.default", "hrnet_fast.multires_fuse.default",
                              "aten.clone.default"}, converted
    with pytest.raises(ValueError, match="cannot take a 0x40 input"):
        fast(torch.randn(1, 3, 0, 40))


def test_official_segmentation_resizing_otherwise_stays_eager(monkeypatch):
    """A forward that resizes other than bilinearly (here: nearest to the target size) fails the probe: those
    fusions and the head run as the model wrote them, the report says why, and the answer is unchanged."""
    import official_hrnet

    def nearest(t, size, mode, align_corners=None):
        return F.interpolate(t, size=size, mode="nearest")

    monkeypatch.setattr(official_hrnet, "F", types.SimpleNamespace(interpolate=nearest))
    seg = calibrated(OfficialHRNet(extra(18, "v1"), "segmentation", 19))
    fast = hrnet_fast.convert(seg)
    assert_model_matches(seg, fast, image(72, 40), decision=pixel_classes)
    text = str(fast.fusion_report())
    assert "other than a bilinear resize" in text and "does not compute last_layer" in text
    assert not any(isinstance(m, FusedHRFuse) for m in fast.modules())


class CustomHead(nn.Module):
    """A pose head of one's own: conv -> BN -> ReLU twice, then a 1x1 conv to heatmaps."""

    def __init__(self, cin, joints):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(cin, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv_b, self.bn_b = nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.out = nn.Conv2d(32, joints, 1)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.conv_a(x)))
        x = torch.relu(self.bn_b(self.conv_b(x)))
        return self.out(x)


class CustomPose(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.backbone = hrnet_fast.create_model("hrnet_w18_small", features_only=True, feature_location="",
                                                out_indices=(1,))
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x)[0])


@pytest.mark.parametrize("kind", ["module", "sequential"])
def test_custom_head_around_an_hrnet_backbone_is_fused(kind):
    head = CustomHead(16, 17) if kind == "module" else nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 17, 1))
    model = calibrated(CustomPose(head))
    fast = hrnet_fast.convert(model)
    assert_model_matches(model, fast, image(64, 96), decision=heatmap_peaks)
    report = fast.fusion_report()
    assert not report.unfused, str(report)
    head_patterns = sorted(e.pattern for e in report.fused if "head" in e.path)
    expected = ["conv", "conv+bn+relu", "conv+bn+relu"] if kind == "module" else ["conv", "conv+bn+relu", "conv+relu"]
    assert head_patterns == expected


def test_pose_and_segmentation_models_on_other_layouts():
    """The task classes take any stage layout (here the small one), as the official code does."""
    for model in (PoseHighResolutionNet(CONFIGS["hrnet_w18_small_v2"]),
                  SegHighResolutionNet(CONFIGS["hrnet_w18_small_v2"], align_corners=False)):
        model = calibrated(model)
        fast = hrnet_fast.convert(model)
        decision = heatmap_peaks if isinstance(model, PoseHighResolutionNet) else pixel_classes
        assert_model_matches(model, fast, image(64, 64), decision=decision)
