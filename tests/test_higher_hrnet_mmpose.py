"""mmpose 0.x HigherHRNet checkpoints (``AssociativeEmbedding`` detector, ``HRNet`` backbone,
``AEHigherResolutionHead``; configs ``associative_embedding/coco/higherhrnet_w32_coco_512x512.py`` and its w48,
640, UDP, CrowdPose, AIC and COCO-WholeBody siblings) into ``higher_hrnet_w32``/``w48``.

The expected names and shapes are typed from the mmpose 0.x sources (branch 0.x, 3b81734):
``AssociativeEmbedding`` holds ``backbone`` and ``keypoint_head``; ``AEHigherResolutionHead`` builds
``final_layers`` (a ModuleList of Conv2d with bias, ``num_joints + dim_tag`` outputs where ``with_ae_loss[i]``,
else ``num_joints``) and ``deconv_layers`` (a ModuleList of Sequential: ``[0]`` Sequential(ConvTranspose2d without
bias, BatchNorm2d, ReLU) on ``in_channels + final output channels`` where ``cat_output``, then
``num_basic_blocks`` x Sequential(BasicBlock)); mmpose's ``BasicBlock`` names its layers ``conv1``, ``bn1``
(``build_norm_layer`` postfix 1), ``conv2``, ``bn2``; the ``HRNet`` backbone's stage 4 ends on branch 0
(``multiscale_output`` defaults to False, no HigherHRNet config sets it). The checkpoint is built by this file's
own renaming, so a wrong mapping fails the tests."""
import warnings

import pytest
import torch

import hrnet_fast
from hrnet_fast import load_checkpoint, to_mmpose
from hrnet_fast.checkpoints import CheckpointError, detect_format, identify_variant, to_mmpose_higher_hrnet
from hrnet_fast.models import PoseHighResolutionNet
from hrnet_fast.models.higher_hrnet import PoseHigherResolutionNet
from hrnet_fast.registry import CONFIGS

SMALL = CONFIGS["hrnet_w18_small"]
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
pytestmark = pytest.mark.usefixtures("one_thread")


def mmpose_by_hand(sd):
    """Our HigherHRNet state dict in mmpose 0.x's names: the head under ``keypoint_head``, the rest under
    ``backbone``."""
    return {(f"keypoint_head.{k}" if k.split(".")[0] in ("final_layers", "deconv_layers") else f"backbone.{k}"): v
            for k, v in sd.items()}


def expected_head(width, joints=17, blocks=4):
    """The head entries of the published configs (one deconv of ``width`` filters, kernel 4, cat_output, with_ae_loss
    [True, False], tag_per_joint, final_conv_kernel 1) and their shapes, as mmpose builds them."""
    head = {"keypoint_head.final_layers.0.weight": (2 * joints, width, 1, 1),
            "keypoint_head.final_layers.0.bias": (2 * joints,),
            "keypoint_head.final_layers.1.weight": (joints, width, 1, 1),
            "keypoint_head.final_layers.1.bias": (joints,),
            # ConvTranspose2d weights are (in, out, k, k): in = branch 0 + heatmaps and tags (cat_output).
            "keypoint_head.deconv_layers.0.0.0.weight": (width + 2 * joints, width, 4, 4)}
    head.update({f"keypoint_head.deconv_layers.0.0.1.{p}": (width,) if p != "num_batches_tracked" else ()
                 for p in BN})
    for k in range(1, blocks + 1):
        for conv in ("conv1", "conv2"):
            head[f"keypoint_head.deconv_layers.0.{k}.0.{conv}.weight"] = (width, width, 3, 3)
        for bn in ("bn1", "bn2"):
            head.update({f"keypoint_head.deconv_layers.0.{k}.0.{bn}.{p}": (width,) if p != "num_batches_tracked"
                         else () for p in BN})
    return head


def randomise(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if p.dim() == 1 and name.endswith("weight") else 0.0, 0.05)
    return hrnet_fast.calibrate_bn(model, (64, 64), steps=1, batch=2).eval()


def small(**kw):
    return PoseHigherResolutionNet(SMALL, **{"num_basic_blocks": 1, **kw})


@pytest.fixture(scope="module")
def trained():
    return randomise(small())


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def assert_same_outputs(a, b, x):
    got, want = outputs(a, x), outputs(b, x)
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        assert torch.isfinite(w).all() and w.abs().max() > 0
        assert torch.equal(g, w)


@pytest.mark.parametrize("name,width", [("higher_hrnet_w32", 32), ("higher_hrnet_w48", 48)])
def test_export_is_mmposes_layout(name, width):
    with torch.device("meta"):
        sd = hrnet_fast.create_model(name).state_dict()
    exported = to_mmpose_higher_hrnet(sd)
    assert exported.keys() == mmpose_by_hand(sd).keys()
    head = {k: tuple(v.shape) for k, v in exported.items() if k.startswith("keypoint_head.")}
    assert head == expected_head(width)
    shapes = {k: tuple(v.shape) for k, v in exported.items()}
    # The mmpose HRNet backbone: stem, layer1 (Bottleneck x4), transitions, stage 4 ending on branch 0.
    assert shapes["backbone.conv1.weight"] == (64, 3, 3, 3) and shapes["backbone.bn2.running_var"] == (64,)
    assert shapes["backbone.layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["backbone.layer1.3.conv3.weight"] == (256, 64, 1, 1)
    assert shapes["backbone.transition1.0.0.weight"] == (width, 256, 3, 3)
    assert shapes["backbone.transition1.1.0.0.weight"] == (2 * width, 256, 3, 3)
    assert shapes["backbone.transition3.3.0.0.weight"] == (8 * width, 4 * width, 3, 3)
    assert shapes["backbone.stage4.1.fuse_layers.1.0.0.0.weight"] == (2 * width, width, 3, 3)
    assert shapes["backbone.stage4.2.fuse_layers.0.3.0.weight"] == (width, 8 * width, 1, 1)
    assert shapes["backbone.stage4.2.branches.0.3.bn2.weight"] == (width,)
    assert not any(k.startswith("backbone.stage4.2.fuse_layers.1.") for k in exported)
    assert detect_format(exported).name == "mmpose 0.x" and detect_format(exported).task == "bottom-up pose"
    assert identify_variant(exported) == [name]


@pytest.mark.parametrize("wrap", ["plain", "mmpose"])
def test_mmpose_higher_hrnet_round_trip_through_a_file(trained, image, tmp_path, wrap):
    sd = to_mmpose_higher_hrnet(trained.state_dict())
    assert sd.keys() == mmpose_by_hand(trained.state_dict()).keys()
    # mmcv's save_checkpoint: {"meta": {...}, "state_dict": ..., "optimizer": ...}
    obj = sd if wrap == "plain" else {"meta": {"mmcv_version": "1.3.9", "epoch": 300, "iter": 150000},
                                      "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}
    torch.save(obj, tmp_path / "higher_hrnet32_coco_512x512.pth")
    fresh = small()
    report = load_checkpoint(fresh, tmp_path / "higher_hrnet32_coco_512x512.pth")
    assert report.format == "mmpose 0.x"
    assert not (report.missing_keys or report.unexpected_keys or report.mismatched_keys or report.ignored_keys)
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert_same_outputs(fresh, trained, image)


def test_renamed_by_hand_loads_exactly(trained, image):
    fresh = small()
    assert load_checkpoint(fresh, mmpose_by_hand(trained.state_dict())).format == "mmpose 0.x"
    assert_same_outputs(fresh, trained, image)


def test_full_size_w32_loads_with_identical_outputs():
    source = randomise(hrnet_fast.create_model("higher_hrnet_w32"))
    fresh = hrnet_fast.create_model("higher_hrnet_w32")
    load_checkpoint(fresh, {"state_dict": mmpose_by_hand(source.state_dict())})
    assert_same_outputs(fresh, source, torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)))


def test_crowdpose_and_aic_joints_need_their_model():
    """Their configs differ from COCO's only in num_joints=14: the refusal says so and names the model to build,
    which then loads."""
    with torch.device("meta"):
        aic = to_mmpose_higher_hrnet(hrnet_fast.create_model("higher_hrnet_w32", num_classes=14).state_dict())
    with pytest.raises(CheckpointError, match=r"(?s)num_joints=14 \(this model: 17\).*number of joints differs.*"
                                              r"create_model\('higher_hrnet_w32', num_classes=14\)") as error:
        load_checkpoint(hrnet_fast.create_model("higher_hrnet_w32"), aic)
    assert error.value.num_classes == 14
    model = hrnet_fast.create_model("higher_hrnet_w32", num_classes=14)
    load_checkpoint(model, {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in aic.items()})
    assert torch.count_nonzero(model.final_layers[0].weight) == 0


@pytest.mark.parametrize("kw,named", [
    (dict(tag_per_joint=False), r"tag_per_joint=False \(this model: True\).*checkpoint \[18, 17\]"),
    (dict(with_ae=(True, True)), r"with_ae=\[True, True\] \(mmpose 0.x's with_ae_loss; this model: \[True, False\]\)"),
    (dict(cat_output=[False]), r"cat_output=\[False\] \(this model: \[True\]\)"),
    (dict(num_basic_blocks=2), r"num_basic_blocks=2 \(this model: 1\)"),
    (dict(final_conv_kernel=3), r"final_conv_kernel=3 \(mmpose 0.x's extra.final_conv_kernel; this model: 1\)"),
    (dict(deconv_kernel=3), r"deconv_kernel=3 \(mmpose 0.x's num_deconv_kernels; this model: 4\)"),
    (dict(deconv_channels=[24]), r"deconv_channels=\[24\] \(mmpose 0.x's num_deconv_filters; this model: \[16\]\)"),
    (dict(with_ae=(True, False, False)), r"with_ae=\[True, False, False\] \(mmpose 0.x's with_ae_loss"),
])
def test_another_head_layout_is_refused_naming_the_difference(kw, named):
    """mmpose's AEHigherResolutionHead arguments other than the published configs' change the outputs' layout (tag
    channels, where the outputs are concatenated, the depth): each is refused, naming the argument."""
    checkpoint = to_mmpose_higher_hrnet(small(**kw).state_dict())
    model = small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"(?s)mmpose 0.x format.*HigherHRNet head: the checkpoint's was "
                                              r"built with .*" + named) as error:
        load_checkpoint(model, checkpoint)
    build = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in kw.items())
    assert f"PoseHigherResolutionNet(cfg, {build})" in str(error.value)
    assert "number of joints differs" not in str(error.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # refused before loading
    load_checkpoint(small(**kw), checkpoint)  # the model the message names loads it


def test_top_down_mmpose_checkpoints_into_higher_hrnet_are_refused():
    with torch.device("meta"):
        top_down = hrnet_fast.create_model("pose_hrnet_w32").state_dict()
    for version in ("0.x", "1.x"):
        fmt = "mmpose 0.x" if version == "0.x" else "mmpose"
        with pytest.raises(CheckpointError, match=rf"is a pose checkpoint of pose_hrnet_w32 \({fmt} format\), but "
                                                  r"this PoseHigherResolutionNet is a bottom-up pose model"):
            load_checkpoint(hrnet_fast.create_model("higher_hrnet_w32"), to_mmpose(top_down, version))


def test_mmpose_higher_hrnet_into_a_top_down_model_is_refused():
    with torch.device("meta"):
        higher = to_mmpose_higher_hrnet(hrnet_fast.create_model("higher_hrnet_w32").state_dict())
    with pytest.raises(CheckpointError, match=r"is a bottom-up pose checkpoint of higher_hrnet_w32 \(mmpose 0.x "
                                              r"format\), but this PoseHighResolutionNet is a pose model\. Build "
                                              r"higher_hrnet_w32"):
        load_checkpoint(hrnet_fast.create_model("pose_hrnet_w32"), higher)


def test_w32_checkpoint_into_w48_is_refused_naming_w32():
    with torch.device("meta"):
        w32 = to_mmpose_higher_hrnet(hrnet_fast.create_model("higher_hrnet_w32").state_dict())
    with pytest.raises(CheckpointError, match=r"(?s)mmpose 0.x format.*backbone.transition1.0.0.weight: checkpoint "
                                              r"\[32, 256, 3, 3\], model \[48, 256, 3, 3\].*looks like a checkpoint "
                                              r"of higher_hrnet_w32") as error:
        load_checkpoint(hrnet_fast.create_model("higher_hrnet_w48"), w32)
    assert "number of joints differs" not in str(error.value)  # the joints are the same; the width is not


def test_missing_and_extra_keys_are_named(trained):
    sd = to_mmpose_higher_hrnet(trained.state_dict())
    missing = {k: v for k, v in sd.items() if k != "keypoint_head.final_layers.1.bias"}
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint \(1\): keypoint_head.final_layers.1.bias"):
        load_checkpoint(small(), missing)
    extra = {**sd, "backbone.stage4.0.fuse_layers.1.0.0.0.weight": torch.zeros(32, 16, 3, 3)}
    with pytest.raises(CheckpointError, match=r"unexpected in the checkpoint \(1\): "
                                              r"backbone.stage4.0.fuse_layers.1.0.0.0.weight"):
        load_checkpoint(small(), extra)
    block = dict(sd)  # a second BasicBlock after the deconv (num_basic_blocks=2)
    block.update({k.replace("deconv_layers.0.1.", "deconv_layers.0.2."): v for k, v in sd.items()
                  if k.startswith("keypoint_head.deconv_layers.0.1.")})
    with pytest.raises(CheckpointError, match=r"(?s)unexpected in the checkpoint \(12\): "
                                              r"keypoint_head.deconv_layers.0.2.0.conv1.weight.*num_basic_blocks=2"):
        load_checkpoint(small(), block)
    report = load_checkpoint(small(), missing, strict=False)
    assert report.missing_keys == ["keypoint_head.final_layers.1.bias"]


def test_backbone_only_mmpose_checkpoint_initialises_the_backbone(trained):
    backbone = {k: v for k, v in to_mmpose_higher_hrnet(trained.state_dict()).items() if k.startswith("backbone.")}
    assert detect_format(backbone, "bottom-up pose").name == "mmpose 0.x"
    model = small()
    with pytest.raises(CheckpointError, match="missing from the checkpoint"):
        load_checkpoint(model, backbone)
    report = load_checkpoint(model, backbone, strict=False)
    assert report.missing_keys and all(k.startswith("keypoint_head.") for k in report.missing_keys)
    assert torch.equal(model.stage4[0].branches[0][0].conv1.weight, trained.stage4[0].branches[0][0].conv1.weight)


def test_exporters_refuse_the_other_pose_kind(trained):
    with pytest.raises(ValueError, match="HigherHRNet.*use to_mmpose_higher_hrnet"):
        to_mmpose(trained.state_dict(), "0.x")
    with pytest.raises(ValueError, match="not a HigherHRNet state dict.*to_mmpose"):
        to_mmpose_higher_hrnet(PoseHighResolutionNet(SMALL).state_dict())


def test_an_associative_embedding_checkpoint_into_a_top_down_model_is_flagged():
    """mmpose's bottom-up HRNet without the higher-resolution head (AESimpleHead in 0.x, AssociativeEmbeddingHead
    in 1.x) has the top-down keys with 17 heatmaps + 17 tags from one conv: refused, and the hint says that 34 is
    17 joints plus tags rather than advising a 34-joint model only."""
    ae = to_mmpose(PoseHighResolutionNet(SMALL, num_joints=34).state_dict(), "0.x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match=r"(?s)number of joints differs.*Its 34 outputs are this model's "
                                                  r"17 joints plus 17 tag map\(s\).*AESimpleHead"):
            load_checkpoint(PoseHighResolutionNet(SMALL), ae)

