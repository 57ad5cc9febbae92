"""One name resolver for every entry point (create_model, bench, profile, eval), and pretrained weights through
timm's own machinery (local files only: this machine reaches no hub)."""
import argparse

import pytest
import torch

import hrnet_fast
from hrnet_fast.bench import parse_models
from hrnet_fast.registry import PRETRAINED_TAGS, parse_name

SPELLINGS = {
    "hrnet_w18": ("hrnet_w18", None), "w18": ("hrnet_w18", None), "W48": ("hrnet_w48", None),
    "w18_small_v2": ("hrnet_w18_small_v2", None), "w48_ssld": ("hrnet_w48_ssld", None),
    "HRNet_W18_C": ("hrnet_w18", None), "HRNet-W32": ("hrnet_w32", None), "HRNet-W48 (ssld)": ("hrnet_w48_ssld", None),
    "hrnet_w18.ms_aug_in1k": ("hrnet_w18", "ms_aug_in1k"), "hrnet_w48_ssld.paddle_in1k": ("hrnet_w48_ssld", "paddle_in1k"),
    "w18_small.gluon_in1k": ("hrnet_w18_small", "gluon_in1k"),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_resolves(spelling):
    assert parse_name(spelling) == SPELLINGS[spelling]
    assert hrnet_fast.resolve_name(spelling) == SPELLINGS[spelling][0]


@pytest.mark.parametrize("bad,pattern", [("w19", r"unknown model name 'w19'.*'w18'.*hrnet_w18\.ms_aug_in1k"),
                                         ("hrnet_w18.paddle_in1k", r"no pretrained tag 'paddle_in1k'.*ms_aug_in1k")])
def test_bad_names_say_what_is_valid(bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_name(bad)


def test_every_timm_tag_is_known():
    timm = pytest.importorskip("timm")
    from timm.models import get_pretrained_cfg
    theirs = {n for n in timm.list_pretrained("hrnet*")}
    ours = {f"{name}.{tag}" for name, tags in PRETRAINED_TAGS.items() for tag in tags}
    assert ours == theirs
    for name, tags in PRETRAINED_TAGS.items():
        assert get_pretrained_cfg(name).tag == tags[0], f"{name}: timm's default tag comes first"


@pytest.mark.parametrize("spelling,name", [("w18_small", "hrnet_w18_small"),
                                           ("hrnet_w18_small.ms_in1k", "hrnet_w18_small"),
                                           ("HRNet-W18 (ssld)", "hrnet_w18_ssld")])
def test_create_model_and_bench_take_the_same_names(spelling, name):
    assert parse_models(spelling) == [name]
    model = hrnet_fast.create_model(spelling)
    assert model.stage_channels == hrnet_fast.create_model(name).stage_channels
    assert (model.final_layer[0].bias is None) == name.endswith("_ssld")


def test_cli_profile_and_eval_accept_short_names_and_tags(tmp_path, capsys):
    from PIL import Image
    from hrnet_fast.cli import main
    assert main(["profile", "--models", "w18_small,hrnet_w18_small_v2.ms_in1k", "--input-size", "64"]) == 0
    assert "hrnet_w18_small_v2" in capsys.readouterr().out
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (40, 30)).save(tmp_path / label / "0.png")
    for spelling in ("w18_small", "hrnet_w18.ms_aug_in1k"):
        # eval builds the model, then looks for the checkpoint: the error is about the file, not the name
        status = main(["eval", "--model", spelling, "--checkpoint", str(tmp_path / "none.pth"), "--data",
                       str(tmp_path), "--no-progress", "--workers", "0", "--num-classes", "2"])
        err = capsys.readouterr().err
        assert status == 2 and "checkpoint not found" in err and "unknown model" not in err, err


# -- pretrained weights ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A stand-in for a published timm checkpoint: a file in timm's format, written here."""
    torch.manual_seed(3)
    model = hrnet_fast.create_model("hrnet_w18_small")
    path = tmp_path_factory.mktemp("weights") / "hrnet_w18_small.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_pretrained_loads_through_timm_with_a_file_overlay(published):
    pytest.importorskip("timm")
    source, path = published
    model = hrnet_fast.create_model("hrnet_w18_small.ms_in1k", pretrained=True,
                                    pretrained_cfg_overlay=dict(file=str(path)))
    for (k, a), b in zip(model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), k
    assert model.pretrained_cfg["tag"] == "ms_in1k" and model.pretrained_cfg["file"] == str(path)
    assert model.default_cfg is model.pretrained_cfg
    assert hrnet_fast.convert(model.eval()).pretrained_cfg["architecture"] == "hrnet_w18_small"


def test_pretrained_default_tag_is_timms(published):
    pytest.importorskip("timm")
    model = hrnet_fast.create_model("w18_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(published[1])))
    assert model.pretrained_cfg["tag"] == "gluon_in1k"


def test_pretrained_with_other_classes_and_features_only(published):
    pytest.importorskip("timm")
    source, path = published
    overlay = dict(file=str(path))
    ten = hrnet_fast.create_model("w18_small", num_classes=10, pretrained=True, pretrained_cfg_overlay=overlay)
    assert ten.classifier.weight.shape == (10, 2048) and torch.equal(ten.conv1.weight, source.conv1.weight)
    feats = hrnet_fast.create_model("w18_small", features_only=True, pretrained=True, pretrained_cfg_overlay=overlay)
    assert torch.equal(feats.incre_modules[3][0].conv3.weight, source.incre_modules[3][0].conv3.weight)


def test_pretrained_matches_timms_own_load(published):
    timm = pytest.importorskip("timm")
    _, path = published
    ours = hrnet_fast.create_model("w18_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    theirs = timm.create_model("hrnet_w18_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    hrnet_fast.calibrate_bn(ours, (64, 64), steps=1, batch=2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_overlay_without_pretrained_is_refused():
    with pytest.raises(ValueError, match="only applies with pretrained=True"):
        hrnet_fast.create_model("w18", pretrained_cfg_overlay=dict(file="x.pth"))
