"""Pose and segmentation checkpoints in every format (official, mmpose 1.x / 0.x, mmsegmentation), written to
files here and loaded back. Expected key names are typed from the mmpose and mmsegmentation sources
(``HeatmapHead.final_layer``, ``TopdownHeatmapSimpleHead.final_layer``, ``FCNHead.convs[0]`` ConvModule with
``conv``/``bn`` and no conv bias, ``BaseDecodeHead.conv_seg``), and the mmsegmentation checkpoint is built by the
test's own renaming, so a wrong mapping fails them."""
import re

import pytest
import torch

from hrnet_fast import calibrate_bn, create_model, load_checkpoint, to_mmpose, to_mmseg
from hrnet_fast.checkpoints import CheckpointError, detect_format, identify_variant
from hrnet_fast.models import PoseHighResolutionNet, SegHighResolutionNet
from hrnet_fast.registry import CONFIGS
from mmseg_layout import mmseg_by_hand

SIZE = (64, 64)
pytestmark = pytest.mark.usefixtures("one_thread")


def randomise(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("weight") and "layer." not in name else 0.0, 0.1)
    return calibrate_bn(model, SIZE, steps=1, batch=2)


@pytest.fixture(scope="module")
def pose():
    """The pose architecture on the small layout: cheap, and every key kind of the real ones."""
    return randomise(PoseHighResolutionNet(CONFIGS["hrnet_w18_small"]))


@pytest.fixture(scope="module")
def seg():
    return randomise(SegHighResolutionNet(CONFIGS["hrnet_w18_small"], align_corners=False))


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(1))


def fresh_like(model):
    if isinstance(model, PoseHighResolutionNet):
        return PoseHighResolutionNet(CONFIGS["hrnet_w18_small"])
    return SegHighResolutionNet(CONFIGS["hrnet_w18_small"], align_corners=False)


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix"])
def test_official_pose_round_trip(pose, image, tmp_path, wrap):
    sd = pose.state_dict()
    obj = {"plain": sd, "state_dict": {"state_dict": sd, "epoch": 210, "perf": 0.7},
           "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    torch.save(obj, tmp_path / "pose_hrnet.pth")
    fresh = fresh_like(pose)
    assert load_checkpoint(fresh, tmp_path / "pose_hrnet.pth").format == "official"
    assert torch.equal(outputs(fresh, image), outputs(pose, image))


@pytest.mark.parametrize("version,head", [("1.x", "head"), ("0.x", "keypoint_head")])
def test_mmpose_round_trip(pose, image, tmp_path, version, head):
    sd = pose.state_dict()
    exported = to_mmpose(sd, version)
    assert set(exported) == {f"backbone.{k}" for k in sd if not k.startswith("final_layer.")} | {
        f"{head}.final_layer.weight", f"{head}.final_layer.bias"}
    assert "backbone.stage4.0.fuse_layers.0.3.0.weight" in exported
    torch.save({"meta": {"mmpose_version": version}, "state_dict": exported}, tmp_path / "mmpose.pth")
    fresh = fresh_like(pose)
    report = load_checkpoint(fresh, tmp_path / "mmpose.pth")
    assert report.format == ("mmpose" if version == "1.x" else "mmpose 0.x")
    assert torch.equal(outputs(fresh, image), outputs(pose, image))


@pytest.mark.parametrize("wrap", ["plain", "full_model"])
def test_official_segmentation_round_trip(seg, image, tmp_path, wrap):
    sd = seg.state_dict()
    if wrap == "full_model":  # the official training saves FullModel(model, loss), loss class weights included
        sd = {**{f"model.{k}": v for k, v in sd.items()}, "loss.criterion.weight": torch.ones(19)}
    torch.save(sd, tmp_path / "seg.pth")
    fresh = fresh_like(seg)
    assert load_checkpoint(fresh, tmp_path / "seg.pth", align_corners=False).format == "official"
    assert torch.equal(outputs(fresh, image), outputs(seg, image))


def test_mmseg_names_and_folding(seg):
    sd = seg.state_dict()
    exported, expected = to_mmseg(sd), mmseg_by_hand(sd)
    assert list(sorted(exported)) == list(sorted(expected))
    assert "decode_head.convs.0.conv.bias" not in exported
    for k in expected:
        torch.testing.assert_close(exported[k], expected[k], rtol=0, atol=0, msg=k)


def test_mmseg_round_trip(seg, image, tmp_path):
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": mmseg_by_hand(seg.state_dict())},
               tmp_path / "fcn_hr18.pth")
    fresh = fresh_like(seg)
    assert load_checkpoint(fresh, tmp_path / "fcn_hr18.pth").format == "mmseg"
    assert torch.count_nonzero(fresh.last_layer[0].bias) == 0  # mmseg's conv has none: zero is exact
    torch.testing.assert_close(outputs(fresh, image), outputs(seg, image))


def test_mmseg_checkpoint_into_an_align_corners_model_is_refused(seg):
    model = SegHighResolutionNet(CONFIGS["hrnet_w18_small"], align_corners=True)
    with pytest.raises(CheckpointError, match="trained with align_corners=False"):
        load_checkpoint(model, to_mmseg(seg.state_dict()))


def test_backbone_only_openmmlab_checkpoint_follows_the_model_task(seg):
    backbone = {k: v for k, v in to_mmseg(seg.state_dict()).items() if k.startswith("backbone.")}
    assert detect_format(backbone, "segmentation").name == "mmseg"
    assert detect_format(backbone, "pose").name == "mmpose"
    report = load_checkpoint(fresh_like(seg), backbone, strict=False)
    assert sorted(report.missing_keys) == sorted(k for k in mmseg_by_hand(seg.state_dict())
                                                 if k.startswith("decode_head."))


def test_wrong_task_checkpoint(pose, seg):
    with pytest.raises(CheckpointError, match="is a pose checkpoint .*official format.*is a segmentation model"):
        load_checkpoint(fresh_like(seg), pose.state_dict())
    with pytest.raises(CheckpointError, match="is a segmentation checkpoint .*mmseg format.*is a pose model"):
        load_checkpoint(fresh_like(pose), to_mmseg(seg.state_dict()))
    with torch.device("meta"):
        imagenet = create_model("hrnet_w32").state_dict()
    with pytest.raises(CheckpointError, match="classification checkpoint of hrnet_w32 .*timm format.*Build hrnet_w32"):
        load_checkpoint(create_model("pose_hrnet_w32"), imagenet)


def test_imagenet_checkpoint_initialises_a_pose_backbone(tmp_path):
    source = create_model("hrnet_w18_small")
    pose_model = PoseHighResolutionNet(CONFIGS["hrnet_w18_small"])
    report = load_checkpoint(pose_model, source.state_dict(), strict=False)
    assert report.missing_keys == ["final_layer.weight", "final_layer.bias"]
    # The classification head, and the fusions to branches 1..3 the pose model's last module does not have.
    assert all(re.match(r"(incre_modules|downsamp_modules|final_layer|classifier|stage4\.0\.fuse_layers\.[123])\.", k)
               for k in report.unexpected_keys)
    assert any(k.startswith("stage4.0.fuse_layers.1.") for k in report.unexpected_keys)
    torch.testing.assert_close(pose_model.stage4[0].fuse_layers[0][3][0].weight,
                               source.stage4[0].fuse_layers[0][3][0].weight, rtol=0, atol=0)


def test_joint_count_mismatch_says_so(pose):
    with pytest.raises(CheckpointError, match="(?s)final_layer.weight.*number of joints differs.*num_classes"):
        load_checkpoint(PoseHighResolutionNet(CONFIGS["hrnet_w18_small"], num_joints=16), pose.state_dict())


def test_identify_pose_and_segmentation_variants():
    with torch.device("meta"):
        assert identify_variant(create_model("pose_hrnet_w48", num_classes=14).state_dict()) == ["pose_hrnet_w48"]
        seg48 = create_model("seg_hrnetv2_w48", num_classes=59).state_dict()
        assert identify_variant(to_mmseg(seg48)) == ["seg_hrnetv2_w48"]
        with pytest.raises(CheckpointError, match="looks like a checkpoint of seg_hrnetv2_w48"):
            load_checkpoint(create_model("seg_hrnetv2_w18"), seg48)
