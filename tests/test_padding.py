"""convert(pad_channels=...): every channel count of a converted HRNet's fused convs padded to a multiple with zero
weights and biases (``hrnet_fast/convert/padding.py``), the outputs unchanged. Bitwise where summation order
cannot matter (integer-valued models, ``padding_models.py``), to fp32 rounding on random calibrated models; the
padded widths, the zero channels and the outputs' widths and layouts checked directly."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

import hrnet_fast
from hrnet_fast.convert.fused import FusedBlock, FusedConvBNAct, FusedHRFuse
from hrnet_fast.convert.padding import ImagePaddingConv
from hrnet_fast.ops import onednn_conv
from official_hrnet import OfficialHRNet, extra
from padding_models import (SIZE, exactness_bound, image, make_integer_valued, tiny_models,
                            zero_resized_terms)
from tolerance import assert_model_matches

pytestmark = pytest.mark.usefixtures("one_thread")


def as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.fixture(scope="module")
def tiny():
    return tiny_models()


# -- (a) bitwise, where summation order cannot matter ------------------------------------------------------------

@pytest.mark.parametrize("family", ["classification", "features", "features incre", "timm classification",
                                    "timm features", "pose", "segmentation"])
def test_integer_valued_models_are_bitwise_equal(tiny, family):
    """Every sum in these models is of integers below 2**24 (checked), so it is exact in any order: the padded
    model must give the unpadded one's bits."""
    model = make_integer_valued(copy.deepcopy(tiny[family]))
    if family == "segmentation":
        zero_resized_terms(model)
    x = image(integer=True)
    assert exactness_bound(model, x) < 2 ** 24
    unpadded, padded = hrnet_fast.convert(model, pad_channels=1), hrnet_fast.convert(model, pad_channels=8)
    assert "18->24" in padded.padding.describe() and "36->40" in padded.padding.describe()
    ys, ps = as_list(unpadded(x)), as_list(padded(x))
    assert len(ys) == len(ps)
    for y, p in zip(ys, ps):
        assert torch.count_nonzero(y) > y.numel() // 4  # not a trivially zero answer
        assert p.shape == y.shape and p.stride() == y.stride()
        torch.testing.assert_close(p, y, rtol=0, atol=0)


# -- (b) random calibrated models, fp32 to rounding -----------------------------------------------------------

def calibrated(model, size=SIZE):
    torch.manual_seed(0)
    return hrnet_fast.calibrate_bn(model, size, steps=2, batch=2)


def heatmap_peaks(y):
    return y.flatten(2).argmax(-1)


def pixel_classes(y):
    return y.argmax(1)


RANDOM_MODELS = {
    "ours w18_small_v2": (lambda: hrnet_fast.create_model("hrnet_w18_small_v2"), SIZE, None),
    "timm w18_small_v2": (lambda: timm.create_model("hrnet_w18_small_v2"), SIZE, None),
    "timm features": (lambda: timm.create_model("hrnet_w18_small_v2", features_only=True, feature_location=""),
                      SIZE, None),
    "ours features incre": (lambda: hrnet_fast.create_model("hrnet_w18_small_v2", features_only=True,
                                                            out_indices=(4, 0, 2)), SIZE, None),
    "official pose": (lambda: OfficialHRNet(extra(18, "v2"), "pose", 17), (64, 96), heatmap_peaks),
    "official seg": (lambda: OfficialHRNet(extra(18, "v2"), "segmentation", 19), (72, 40), pixel_classes),
    "ours seg": (lambda: hrnet_fast.create_model("seg_hrnetv2_w18_small_v2", align_corners=False), (70, 45),
                 pixel_classes),
}


@pytest.mark.parametrize("multiple", [8, 16])
@pytest.mark.parametrize("name", list(RANDOM_MODELS))
def test_random_calibrated_models_fp32(name, multiple):
    make, size, decision = RANDOM_MODELS[name]
    model = calibrated(make(), size)
    fast = hrnet_fast.convert(model, pad_channels=multiple)
    assert fast.padding.widths.get(18) == (24 if multiple == 8 else 32)
    assert_model_matches(model, fast, image(size), decision=decision)


def test_an_odd_multiple_pads_every_width_and_still_matches():
    """Multiples of 5: 18->20, 64->65, 128->130 ... 1024->1025; the head's last conv keeps its 2048."""
    model = calibrated(hrnet_fast.create_model("hrnet_w18_small_v2"))
    fast = hrnet_fast.convert(model, pad_channels=5)
    assert {18: 20, 64: 65, 1024: 1025}.items() <= fast.padding.widths.items()
    assert fast.inner.final_layer.weight.shape[:2] == (2048, 1025)
    assert_model_matches(model, fast, image())


# -- (c) what is padded, what is zero, what comes out ----------------------------------------------------------

def test_every_conv_weight_is_padded(tiny):
    """The converted convs' shapes are the model's with every width rounded up to a multiple of 8 (the stem's 3
    image channels too), but final_layer's 2048 outputs, which the pooling and Linear read."""
    model = tiny["classification"]
    fast = hrnet_fast.convert(model, pad_channels=8)

    def up(c):
        return -(-c // 8) * 8
    expected = sorted((m.out_channels if m is model.final_layer[0] else up(m.out_channels), up(m.in_channels),
                       m.kernel_size[0]) for m in model.modules() if isinstance(m, nn.Conv2d))
    convs = [m for m in fast.inner.modules() if isinstance(m, FusedConvBNAct)]
    assert sorted(tuple(m.weight.shape[:3]) for m in convs) == expected
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert type(fast.inner.conv1) is ImagePaddingConv and fast.inner.conv1.weight.shape[1] == 8
    assert torch.count_nonzero(fast.inner.conv1.weight[:, 3:]) == 0
    assert torch.count_nonzero(fast.inner.conv1.weight[20:]) == 0 and torch.count_nonzero(fast.inner.conv1.bias[20:]) == 0


def test_padded_channels_of_activations_are_zero(tiny):
    model = calibrated(copy.deepcopy(tiny["pose"]))
    fast = hrnet_fast.convert(model, pad_channels=8)
    seen = []

    def check(module, args, out):
        width = 20 if module is fast.inner.conv1 else {24: 18, 40: 36}.get(out.shape[1])  # the stem is 20 wide
        if width is not None:
            assert torch.count_nonzero(out[:, width:]) == 0, type(module).__name__
            assert torch.count_nonzero(out[:, :width]) > 0
            seen.append(type(module).__name__)

    for m in fast.inner.modules():
        if isinstance(m, (FusedHRFuse, FusedBlock)) or m is fast.inner.conv1:
            m.register_forward_hook(check)
    fast(image())
    assert {"FusedHRFuse", "FusedBlock", "ImagePaddingConv"} <= set(seen), seen


@pytest.mark.parametrize("keep_channels_last", [False, True])
@pytest.mark.parametrize("input_layout", [torch.contiguous_format, torch.channels_last])
def test_outputs_keep_their_widths_and_layouts(tiny, keep_channels_last, input_layout):
    model = tiny["features"]
    x = image().contiguous(memory_format=input_layout)
    unpadded = hrnet_fast.convert(model, keep_channels_last=keep_channels_last, pad_channels=1)(x)
    padded = hrnet_fast.convert(model, keep_channels_last=keep_channels_last, pad_channels=8)(x)
    assert [t.shape[1] for t in padded] == [20, 18, 36, 72, 144]
    for p, y in zip(padded, unpadded):
        assert p.shape == y.shape and p.stride() == y.stride()  # dense, in the layout the unpadded model gives


def test_report_and_repr_say_what_was_padded(tiny):
    fast = hrnet_fast.convert(tiny["classification"], pad_channels=8)
    text = "channels 18->24, 20->24, 36->40, image 3->8"
    assert text in str(fast.fusion_report())
    assert f"pad_channels=8 ({text})" in repr(fast)


def test_cpu_default_pads_nothing(tiny):
    fast = hrnet_fast.convert(tiny["classification"])
    assert fast.padding.multiple == 1 and not fast.padding.widths
    assert type(fast.inner.conv1) is FusedConvBNAct and fast.inner.conv1.weight.shape[1] == 3
    assert "padding" not in str(fast.fusion_report()) and "pad_channels" not in repr(fast)


def test_cuda_default_multiples(monkeypatch):
    from hrnet_fast.convert import padding
    monkeypatch.setattr(padding, "select", lambda op, device, backend: backend or "cuda")
    assert padding.default_multiple(torch.device("cuda"), None) == 8
    assert padding.default_multiple(torch.device("cuda"), "torch") == 8
    assert padding.default_multiple(torch.device("cuda"), "triton") == 16
    assert padding.default_multiple(torch.device("cpu"), None) == 1


def test_what_padding_cannot_follow_is_left_unpadded_with_a_reason():
    from mmpretrain_layout import ImageClassifier
    from tiny_hrnet import TinyHRNetClassifier
    for model, reason in ((ImageClassifier(hrnet_fast.create_model("hrnet_w18_small")), "backbone of a"),
                          (TinyHRNetClassifier(), "backbone of a"),
                          (timm.create_model("resnet18"), "only HRNet-structured")):
        model = calibrated(model)
        fast = hrnet_fast.convert(model, pad_channels=8)
        assert not fast.padding.widths and not fast.padding.pads_image
        assert any(e.pattern == "channel padding" and reason in e.detail for e in fast.fusion_report().unfused)
        assert "not padded" in repr(fast)
        assert_model_matches(model, fast, image())


# -- (d) argument errors, re-conversion ------------------------------------------------------------------------

@pytest.mark.parametrize("value,error,match", [(0, ValueError, "must be >= 1"), (-8, ValueError, "must be >= 1"),
                                               (8.0, TypeError, "must be an int"), ("8", TypeError, "must be an int"),
                                               (True, TypeError, "must be an int")])
def test_bad_pad_channels(tiny, value, error, match):
    with pytest.raises(error, match=match):
        hrnet_fast.convert(tiny["pose"], pad_channels=value)


def test_reconvert_keeps_padding_and_refuses_another(tiny):
    fast = hrnet_fast.convert(tiny["pose"], pad_channels=8)
    assert hrnet_fast.convert(fast).padding.multiple == 8
    assert hrnet_fast.convert(fast, pad_channels=8).padding.multiple == 8
    with pytest.raises(ValueError, match="already converted with pad_channels=8"):
        hrnet_fast.convert(fast, pad_channels=16)


# -- replay --------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not onednn_conv.available()[0], reason="the extension was built without oneDNN")
def test_padded_model_replays_its_stages_on_cpu(monkeypatch):
    """The replayed stages (``replay.py``) run the padded convs: replayed calls give the module path's bits."""
    model = calibrated(hrnet_fast.create_model("hrnet_w18_small_v2"))
    fast = hrnet_fast.convert(model, pad_channels=8)
    x = image()
    first = fast(x)  # the module path, which lists the steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        again = fast(x)
    assert sum(e.name == "hrnet_fast_C::replay" for e in prof.events()) > 0
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert_model_matches(model, fast, x)
