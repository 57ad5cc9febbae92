"""What a model carries besides its weights, as timm's models do, whether or not weights were loaded:
``pretrained_cfg`` / ``default_cfg``, ``num_classes``, ``num_features``, ``feature_info`` (classification), and a
converted model forwards them."""
import pytest
import torch

import hrnet_fast
from hrnet_fast.registry import PRETRAINED_TAGS, list_models

# Published widths: HRNetV2's head concatenates the four branches (W18: 18+36+72+144; W48: 48+96+192+384).
SEG_WIDTH = {"seg_hrnetv2_w18_small": 16 + 32 + 64 + 128, "seg_hrnetv2_w18": 270, "seg_hrnetv2_w48": 720}
POSE_WIDTH = {"pose_hrnet_w32": 32, "pose_hrnet_w48": 48}


@pytest.mark.parametrize("name", list_models())
def test_every_model_carries_its_cfg_and_sizes_without_weights(name):
    model = hrnet_fast.create_model(name)
    assert model.default_cfg is model.pretrained_cfg
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name and cfg["first_conv"] == "conv1"
    assert cfg["tag"] == (PRETRAINED_TAGS[name][0] if name in PRETRAINED_TAGS else None)
    assert isinstance(model.num_features, int) and isinstance(model.num_classes, int)
    classifier = model.get_submodule(cfg["classifier"])  # the cfg names the module that makes the outputs
    assert classifier.weight.shape[0] == model.num_classes == cfg["num_classes"]


@pytest.mark.parametrize("variant", [f"{n}.{t}" for n, tags in PRETRAINED_TAGS.items() for t in tags])
def test_classification_cfg_is_timms_for_every_tag(variant):
    pytest.importorskip("timm")
    from timm.models import get_pretrained_cfg
    assert hrnet_fast.create_model(variant).pretrained_cfg == get_pretrained_cfg(variant).to_dict()


@pytest.mark.parametrize("location", ["incre", ""])
def test_features_only_cfg_is_timms_and_num_features_is_the_last_maps_width(location):
    timm = pytest.importorskip("timm")
    ours = hrnet_fast.create_model("hrnet_w18_small", features_only=True, feature_location=location).eval()
    theirs = timm.create_model("hrnet_w18_small", features_only=True, feature_location=location)
    assert ours.pretrained_cfg == theirs.pretrained_cfg  # no classifier or num_classes keys: no head
    with torch.no_grad():
        maps = ours(torch.randn(1, 3, 64, 64))
    assert ours.num_features == maps[-1].shape[1] == {"incre": 1024, "": 128}[location]


def test_classification_num_features_is_timms_and_what_the_classifier_reads():
    timm = pytest.importorskip("timm")
    for num_classes in (1000, 0):
        ours = hrnet_fast.create_model("hrnet_w18_small", num_classes=num_classes)
        theirs = timm.create_model("hrnet_w18_small", num_classes=num_classes)
        assert ours.num_features == theirs.num_features == 2048
        assert ours.num_classes == theirs.num_classes == num_classes
    assert hrnet_fast.create_model("hrnet_w18_small").classifier.in_features == 2048


@pytest.mark.parametrize("name", ["pose_hrnet_w32", "pose_hrnet_w48", "seg_hrnetv2_w18_small", "seg_hrnetv2_w18",
                                  "seg_hrnetv2_w48"])
def test_task_models_num_features_is_the_width_their_classifier_reads(name):
    model = hrnet_fast.create_model(name)
    assert model.num_features == {**SEG_WIDTH, **POSE_WIDTH}[name]
    assert model.get_submodule(model.pretrained_cfg["classifier"]).in_channels == model.num_features
    assert not hasattr(model, "feature_info")  # their outputs are heatmaps or logits, not feature maps


@pytest.mark.parametrize("name,kwargs,size", [("hrnet_w18_small", {}, (64, 64)),
                                              ("hrnet_w18_small", dict(features_only=True), (64, 64)),
                                              ("pose_hrnet_w32", {}, (64, 64)),
                                              ("seg_hrnetv2_w18_small", dict(num_classes=5), (36, 52))])
def test_converted_model_forwards_the_attributes(name, kwargs, size):
    model = hrnet_fast.calibrate_bn(hrnet_fast.create_model(name, **kwargs), size, steps=1, batch=2)
    fast = hrnet_fast.convert(model)
    assert fast.pretrained_cfg == model.pretrained_cfg and fast.default_cfg == model.default_cfg
    assert fast.num_features == model.num_features and fast.num_classes == model.num_classes
    if hasattr(model, "feature_info"):
        assert fast.feature_info.channels() == model.feature_info.channels()
    out = fast(torch.randn(1, 3, *size))
    if not kwargs.get("features_only"):
        assert out.shape[1] == fast.num_classes


def test_readme_first_example_runs_without_weights():
    """The README's attribute line, on a model built without downloading anything."""
    fast = hrnet_fast.convert(hrnet_fast.create_model("hrnet_w18_small").eval())
    assert (fast.num_classes, fast.pretrained_cfg["tag"]) == (1000, "gluon_in1k")
    assert hrnet_fast.create_model("hrnet_w18").pretrained_cfg["tag"] == "ms_aug_in1k"
    assert hrnet_fast.create_model("hrnet_w18.ms_in1k").pretrained_cfg["tag"] == "ms_in1k"
