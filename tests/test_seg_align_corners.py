"""A segmentation checkpoint's resize convention (align_corners), which no state dict records, checked on loading.

Checkpoints are written here in every format the loader reads: mmsegmentation (renamed by hand, so the check does
not lean on the exporter), the flat official layout (plain, ``state_dict``-wrapped, the official training's
``FullModel``), and for the tasks that must stay silent, timm, mmpretrain, PaddleClas, official pose and mmpose.
"""
import pickle
import warnings

import pytest
import torch

from hrnet_fast import calibrate_bn, create_model, load_checkpoint, to_mmpose, to_mmpretrain, to_paddle
from hrnet_fast.checkpoints import CheckpointError
from hrnet_fast.models import PoseHighResolutionNet, SegHighResolutionNet
from hrnet_fast.registry import CONFIGS
from mmseg_layout import mmseg_by_hand

pytestmark = pytest.mark.usefixtures("one_thread")
NAME = "seg_hrnetv2_w18_small"


def seg_model(align_corners):
    return SegHighResolutionNet(CONFIGS["hrnet_w18_small"], align_corners=align_corners)


@pytest.fixture(scope="module")
def trained():
    """A segmenter with every parameter random and BN calibrated, as if trained with align_corners=False."""
    torch.manual_seed(0)
    model = seg_model(False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("weight") and "layer." not in name else 0.0, 0.1)
    return calibrate_bn(model, (64, 64), steps=1, batch=2).eval()


@pytest.fixture(scope="module")
def image():
    # 96x64: the branches are 24x16 .. 3x2, so every resize is a real 2x/4x/8x upsample.
    return torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def mmseg_file(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("mmseg") / "fcn_hr18s.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": mmseg_by_hand(trained.state_dict())}, path)
    return path


def official(sd, wrap):
    if wrap == "state_dict":
        return {"state_dict": sd, "epoch": 484}
    if wrap == "full_model":  # the official training saves FullModel(model, loss)
        return {**{f"model.{k}": v for k, v in sd.items()}, "loss.criterion.weight": torch.ones(19)}
    return sd


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def load_silently(model, checkpoint, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_checkpoint(model, checkpoint, **kwargs)


def load_warned(model, checkpoint):
    """The report and the one warning the load gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = load_checkpoint(model, checkpoint)
    assert len(caught) == 1, [str(w.message) for w in caught]
    return report, str(caught[0].message)


# ------------------------------------------------------------------------------------------- the numeric effect


def test_the_convention_changes_the_logits_so_the_guard_matters(trained, image, mmseg_file):
    matching = create_model(NAME, align_corners=False)
    load_silently(matching, mmseg_file)
    other = create_model(NAME, align_corners=True)
    load_silently(other, mmseg_file, align_corners="ignore")
    assert torch.equal(other.state_dict()["last_layer.3.weight"], matching.state_dict()["last_layer.3.weight"])
    reference = logits(trained, image)
    torch.testing.assert_close(logits(matching, image), reference)
    wrong = logits(other, image)
    assert rel_err(wrong, reference) > 0.1
    assert (wrong.argmax(1) != reference.argmax(1)).float().mean() > 0.05


# ---------------------------------------------------------------------------------------------- mmsegmentation


def test_mmseg_into_a_matching_model_loads_silently(mmseg_file):
    assert load_silently(create_model(NAME, align_corners=False), mmseg_file).format == "mmseg"


def test_mmseg_into_an_align_corners_true_model_is_refused_with_the_remedy(mmseg_file):
    model = create_model(NAME, num_classes=19)  # align_corners=True, the default
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, mmseg_file)
    message = str(err.value)
    for part in ("align_corners", "mmseg", "trained with align_corners=False", "resizes with align_corners=True",
                 f"hrnet_fast.create_model('{NAME}', num_classes=19, align_corners=False)",
                 "align_corners='ignore'"):
        assert part in message, (part, message)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "refused, yet weights changed"


def test_mismatch_advice_names_the_variant_of_a_directly_built_model(mmseg_file):
    with pytest.raises(CheckpointError, match=f"create_model\\('{NAME}', num_classes=19, align_corners=False\\)"):
        load_checkpoint(seg_model(True), mmseg_file)


def test_ignore_loads_an_mmseg_checkpoint_into_the_other_convention(mmseg_file):
    model = create_model(NAME)
    assert load_silently(model, mmseg_file, align_corners="ignore").format == "mmseg"
    assert model.align_corners is True


def test_a_stated_convention_overrules_the_format(mmseg_file):
    load_silently(create_model(NAME, align_corners=True), mmseg_file, align_corners=True)
    with pytest.raises(CheckpointError, match="as stated by load_checkpoint"):
        load_checkpoint(create_model(NAME, align_corners=False), mmseg_file, align_corners=True)


def test_backbone_only_mmseg_checkpoint_is_not_checked(trained):
    backbone = {k: v for k, v in mmseg_by_hand(trained.state_dict()).items() if k.startswith("backbone.")}
    assert load_silently(create_model(NAME), backbone, strict=False).format == "mmseg"


# ------------------------------------------------------------------------------------------------ flat layout


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "full_model"])
@pytest.mark.parametrize("ours", [True, False])
def test_flat_segmentation_checkpoint_warns_once_naming_both_conventions(trained, tmp_path, wrap, ours):
    torch.save(official(trained.state_dict(), wrap), tmp_path / "seg_hrnet.pth")
    report, message = load_warned(create_model(NAME, align_corners=ours), tmp_path / "seg_hrnet.pth")
    assert report.format == "official"
    for part in ("official format", "does not record the align_corners", f"resizes with align_corners={ours}",
                 "align_corners=True: corner pixels aligned", "align_corners=False: half-pixel centres",
                 f"create_model(..., align_corners={not ours})", "align_corners='ignore'"):
        assert part in message, (part, message)


@pytest.mark.parametrize("ours", [True, False])
def test_flat_checkpoint_with_a_stated_convention_is_checked_silently(trained, ours):
    sd = trained.state_dict()
    load_silently(create_model(NAME, align_corners=ours), sd, align_corners=ours)
    with pytest.raises(CheckpointError, match=f"trained with align_corners={not ours} \\(as stated"):
        load_checkpoint(create_model(NAME, align_corners=ours), sd, align_corners=not ours)


def test_flat_checkpoint_with_ignore_is_silent(trained):
    assert load_silently(create_model(NAME), trained.state_dict(), align_corners="ignore").format == "official"


def test_a_model_without_an_align_corners_attribute_says_it_was_not_checked(mmseg_file):
    model = create_model(NAME)
    del model.align_corners  # as the official repository's class, which keeps the convention in a module global
    _, message = load_warned(model, mmseg_file)
    assert "cannot tell which align_corners" in message and "align_corners=False" in message


@pytest.mark.parametrize("value", ["yes", None, 1, "Check"])
def test_an_unknown_align_corners_argument_is_refused(trained, value):
    with pytest.raises(ValueError, match="align_corners must be 'check'"):
        load_checkpoint(create_model(NAME), trained.state_dict(), align_corners=value)


# ------------------------------------------------------------------------- other tasks: nothing to check, silent


def save_pdparams(state, path):
    with open(path, "wb") as f:  # to_paddle gives numpy arrays, as paddle.save pickles them
        pickle.dump(state, f, protocol=4)


@pytest.mark.parametrize("fmt", ["timm", "mmpretrain", "paddle"])
def test_classification_checkpoints_load_without_warnings(tmp_path, fmt):
    sd = create_model("hrnet_w18_small").state_dict()
    path = tmp_path / ("hrnet.pdparams" if fmt == "paddle" else "hrnet.pth")
    if fmt == "paddle":
        save_pdparams(to_paddle(sd), path)
    else:
        torch.save(sd if fmt == "timm" else {"state_dict": to_mmpretrain(sd)}, path)
    assert load_silently(create_model("hrnet_w18_small"), path).format.startswith(fmt)


@pytest.mark.parametrize("fmt", ["official", "mmpose", "mmpose 0.x"])
def test_pose_checkpoints_load_without_warnings(tmp_path, fmt):
    sd = PoseHighResolutionNet(CONFIGS["hrnet_w18_small"]).state_dict()
    checkpoint = sd if fmt == "official" else {"state_dict": to_mmpose(sd, "0.x" if "0.x" in fmt else "1.x")}
    torch.save(checkpoint, tmp_path / "pose.pth")
    report = load_silently(PoseHighResolutionNet(CONFIGS["hrnet_w18_small"]), tmp_path / "pose.pth")
    assert report.format == fmt


def test_imagenet_checkpoint_initialising_a_segmenter_is_silent():
    sd = create_model("hrnet_w18_small").state_dict()
    assert load_silently(create_model(NAME), sd, strict=False).format == "timm"
