"""Pose and segmentation models against independent constructions of the official ones (tests/official_hrnet.py):
same state_dict keys and shapes in the same order, the published parameter counts, the same outputs."""
import pytest
import torch

from hrnet_fast import calibrate_bn, create_model, list_models
from hrnet_fast.models import branch_sizes
from official_hrnet import OfficialHRNet, extra

OFFICIAL = {
    "pose_hrnet_w32": (extra(32), "pose", 17), "pose_hrnet_w48": (extra(48), "pose", 17),
    "seg_hrnetv2_w18_small": (extra(18, "v1"), "segmentation", 19),
    "seg_hrnetv2_w18_small_v2": (extra(18, "v2"), "segmentation", 19),
    "seg_hrnetv2_w18": (extra(18), "segmentation", 19), "seg_hrnetv2_w32": (extra(32), "segmentation", 19),
    "seg_hrnetv2_w48": (extra(48), "segmentation", 19),
}
# Published parameter counts (M): the pose paper (W32 28.5, W48 63.6), the segmentation paper (W48 65.9).
PUBLISHED_PARAMS = {"pose_hrnet_w32": 28.5, "pose_hrnet_w48": 63.6, "seg_hrnetv2_w48": 65.9}


pytestmark = pytest.mark.usefixtures("one_thread")


def official(name, **kwargs):
    cfg, task, outputs = OFFICIAL[name]
    return OfficialHRNet(cfg, task, outputs, **kwargs)


def test_every_task_model_has_an_official_counterpart():
    assert set(list_models("pose")) | set(list_models("segmentation")) == set(OFFICIAL)


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_keys_shapes_and_params_match_the_official_construction(name):
    with torch.device("meta"):
        ref, ours = official(name), create_model(name)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    params = sum(p.numel() for p in ours.parameters())
    assert params == sum(p.numel() for p in ref.parameters())
    if name in PUBLISHED_PARAMS:
        assert round(params / 1e6, 1) == PUBLISHED_PARAMS[name]


def calibrated_pair(name, size, **kwargs):
    """The official construction with calibrated BN, and ours loaded from its state dict (strict)."""
    torch.manual_seed(0)
    ref = calibrate_bn(official(name, **kwargs), size, steps=1, batch=2)
    ours = create_model(name, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()


@torch.no_grad()
@pytest.mark.parametrize("size", [(64, 64), (128, 96)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_pose_outputs_match(size):
    ref, ours = calibrated_pair("pose_hrnet_w32", (64, 64))
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    y = ours(x)
    assert y.shape == (2, 17, size[0] // 4, size[1] // 4)
    torch.testing.assert_close(y, ref(x))


@torch.no_grad()
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("size", [(64, 64), (72, 40), (52, 52)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_segmentation_outputs_match_at_any_size(size, align_corners):
    ref, ours = calibrated_pair("seg_hrnetv2_w18_small", (64, 64), align_corners=align_corners)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
    y = ours(x)
    assert y.shape[-2:] == branch_sizes(*size)[0]
    torch.testing.assert_close(y, ref(x))


def test_branch_sizes_of_a_pascal_context_crop():
    assert [s[0] for s in branch_sizes(520, 520)] == [130, 65, 33, 17]


def test_task_defaults_and_options():
    with torch.device("meta"):
        assert create_model("pose_hrnet_w32").final_layer.out_channels == 17
        assert create_model("seg_hrnetv2_w18").last_layer[3].out_channels == 19
        assert create_model("seg_hrnet_w18", num_classes=59).last_layer[3].out_channels == 59
        assert create_model("seg_hrnetv2_w18").align_corners is True
        assert create_model("seg_hrnetv2_w18", align_corners=False).align_corners is False
        assert create_model("pose_hrnet_w48_256x192").final_layer.in_channels == 48
    with pytest.raises(ValueError, match="features_only.*classification models"):
        create_model("pose_hrnet_w32", features_only=True)
    with pytest.raises(ValueError, match="align_corners applies to segmentation models"):
        create_model("pose_hrnet_w32", align_corners=False)
    with pytest.raises(ValueError, match="unknown task"):
        list_models("detection")


def test_pose_input_the_nearest_fusion_cannot_take():
    model = create_model("pose_hrnet_w32").eval()
    with pytest.raises(ValueError, match="cannot take a 250x190 input"):
        model(torch.randn(1, 3, 250, 190))
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        model(torch.randn(1, 1, 256, 192))
