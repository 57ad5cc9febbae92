"""HigherHRNet and HRNet + OCR checkpoints, written to files here and loaded back through ``load_checkpoint``, and
no silently wrong load between them and every other format the loader reads: each checkpoint of another task or
format into these models, and theirs into every other model, raises ``CheckpointError`` (strict)."""
import warnings

import pytest
import torch
import torch.nn as nn

import hrnet_fast
from hrnet_fast import load_checkpoint, to_mmpose, to_mmpretrain, to_mmseg, to_paddle
from hrnet_fast.checkpoints import CheckpointError, model_task, to_mmpose_higher_hrnet, to_mmseg_ocr
from hrnet_fast.models import HighResolutionNet, PoseHighResolutionNet, SegHighResolutionNet
from hrnet_fast.models.higher_hrnet import PoseHigherResolutionNet
from hrnet_fast.models.ocr import SegHRNetOCR
from hrnet_fast.registry import CONFIGS

SMALL = CONFIGS["hrnet_w18_small"]
pytestmark = pytest.mark.usefixtures("one_thread")


def randomise(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return hrnet_fast.calibrate_bn(model, (64, 64), steps=1, batch=2)


def higher():
    return PoseHigherResolutionNet(SMALL, num_basic_blocks=1)


def ocr(align_corners=True):
    return SegHRNetOCR(SMALL, mid_channels=32, key_channels=16, align_corners=align_corners)


@pytest.fixture(scope="module")
def trained():
    return {"higher": randomise(higher()), "ocr": randomise(ocr())}


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix"])
def test_official_higher_hrnet_round_trip(trained, tmp_path, wrap):
    sd = trained["higher"].state_dict()
    obj = {"plain": sd, "state_dict": {"state_dict": sd, "epoch": 300},
           "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    torch.save(obj, tmp_path / "pose_higher_hrnet.pth")
    fresh = higher()
    assert load_checkpoint(fresh, tmp_path / "pose_higher_hrnet.pth").format == "official"
    x = torch.randn(1, 3, 64, 96)
    for a, b in zip(outputs(fresh, x), outputs(trained["higher"], x)):
        assert torch.equal(a, b)


def test_official_ocr_round_trip_from_the_training_full_model(trained, tmp_path):
    """The official training saves FullModel(model, loss): ``model.``-prefixed keys and the loss's class weights."""
    sd = trained["ocr"].state_dict()
    torch.save({**{f"model.{k}": v for k, v in sd.items()}, "loss.criterion.weight": torch.ones(19)},
               tmp_path / "hrnet_ocr_cs.pth")
    fresh = ocr()
    assert load_checkpoint(fresh, tmp_path / "hrnet_ocr_cs.pth", align_corners=True).format == "official"
    x = torch.randn(1, 3, 72, 40)
    for a, b in zip(outputs(fresh, x), outputs(trained["ocr"], x)):
        assert torch.equal(a, b)


def test_ocr_checkpoint_align_corners(trained):
    sd = trained["ocr"].state_dict()
    with pytest.warns(UserWarning, match="does not record the align_corners") as record:
        load_checkpoint(ocr(), sd)
    assert len(record) == 1
    with pytest.raises(CheckpointError, match=r"trained with align_corners=True .*SegHRNetOCR resizes with "
                                              r"align_corners=False.*num_classes=19, align_corners=True\)"):
        load_checkpoint(ocr(align_corners=False), sd, align_corners=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(ocr(), sd, align_corners="ignore")


def test_joint_count_mismatch_says_so(trained):
    with pytest.raises(CheckpointError, match="(?s)final_layers.0.weight.*number of joints differs"):
        load_checkpoint(PoseHigherResolutionNet(SMALL, num_joints=14, num_basic_blocks=1),
                        trained["higher"].state_dict())


def test_full_size_checkpoints_name_their_variant():
    with torch.device("meta"):
        w48 = hrnet_fast.create_model("higher_hrnet_w48").state_dict()
    with pytest.raises(CheckpointError, match="looks like a checkpoint of higher_hrnet_w48"):
        load_checkpoint(hrnet_fast.create_model("higher_hrnet_w32"), w48)


def test_imagenet_weights_initialise_the_backbone_only():
    source = hrnet_fast.create_model("hrnet_w18_small")
    model = higher()
    report = load_checkpoint(model, source.state_dict(), strict=False)
    assert report.missing_keys and all(k.startswith(("final_layers.", "deconv_layers.")) for k in report.missing_keys)
    torch.testing.assert_close(model.stage4[0].branches[0][0].conv1.weight,
                               source.stage4[0].branches[0][0].conv1.weight, rtol=0, atol=0)


def test_the_official_classes_are_recognised_by_their_heads():
    bottom_up = nn.Module()
    bottom_up.final_layers, bottom_up.deconv_layers = nn.ModuleList([nn.Conv2d(4, 4, 1)]), nn.ModuleList()
    with_ocr = nn.Module()
    with_ocr.cls_head, with_ocr.ocr_distri_head = nn.Conv2d(4, 4, 1), nn.Module()
    assert model_task(bottom_up) == "bottom-up pose" and model_task(with_ocr) == "OCR segmentation"


BUILD = {"higher": higher, "ocr": ocr, "timm": lambda: HighResolutionNet(SMALL),
         "official pose": lambda: PoseHighResolutionNet(SMALL),
         "official seg": lambda: SegHighResolutionNet(SMALL, align_corners=False)}
FORMATS = ["timm", "mmpretrain", "paddle", "official pose", "mmpose", "mmpose 0.x", "official seg", "mmseg", "higher",
           "mmpose higher", "ocr", "mmseg ocr"]


@pytest.fixture(scope="module")
def targets():
    """One model of each kind, built once: a refused load raises before it changes the model."""
    return {name: build() for name, build in BUILD.items()}


@pytest.fixture(scope="module")
def every_format():
    """One checkpoint of each format and task the loader reads, on the small layout."""
    cls = HighResolutionNet(SMALL).state_dict()
    pose = PoseHighResolutionNet(SMALL).state_dict()
    seg = SegHighResolutionNet(SMALL, align_corners=False).state_dict()
    return {"timm": cls, "mmpretrain": to_mmpretrain(cls), "paddle": to_paddle(cls),
            "official pose": pose, "mmpose": to_mmpose(pose), "mmpose 0.x": to_mmpose(pose, "0.x"),
            "official seg": seg, "mmseg": to_mmseg(seg),
            "higher": higher().state_dict(), "mmpose higher": to_mmpose_higher_hrnet(higher().state_dict()),
            "ocr": ocr().state_dict(),
            "mmseg ocr": to_mmseg_ocr(ocr(align_corners=False).state_dict())}


NEW = {"higher", "mmpose higher", "ocr", "mmseg ocr"}


@pytest.mark.parametrize("target,source", [(t, s) for t in BUILD for s in FORMATS
                                           if s not in (t, f"mmseg {t}", f"mmpose {t}") and NEW & {s, t}])
def test_no_checkpoint_of_another_kind_loads_silently(every_format, targets, target, source):
    """Every checkpoint of another task or format into HigherHRNet or OCR, and theirs into every other model."""
    with pytest.raises(CheckpointError), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a segmentation checkpoint's align_corners warning, where one is reached
        load_checkpoint(targets[target], every_format[source])


@pytest.mark.parametrize("source", ["higher", "mmpose higher"])
def test_the_matrix_leaves_out_only_loads_that_fit(every_format, source):
    """HigherHRNet's own formats, left out of the matrix above, load into it (strict)."""
    assert load_checkpoint(higher(), every_format[source]).format == ("official" if source == "higher" else
                                                                       "mmpose 0.x")
