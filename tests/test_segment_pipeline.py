"""Segmenter in whole-image mode, fused and reference, against the test's own pipeline (normalise, network,
F.interpolate to full size, argmax); flip averaging; probabilities; the inputs it takes and the ones it refuses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import hrnet_fast
from hrnet_fast import Segmenter
from segment_support import (disagreements_are_ties, images, network_gap, normalized, tiny_seg_model,
                                   whole_scores)
from tiny_hrnet import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=[False, True], ids=["half_pixel", "align_corners"])
def model(request):
    return tiny_seg_model(align_corners=request.param)


@pytest.fixture(scope="module")
def batch():
    return images(2, 45, 61)  # 45x61: stride-4 logits of 12x16, neither size a multiple of the other


def test_whole_mode_matches_the_plain_pipeline(model, batch):
    x = normalized(batch)
    expected = whole_scores(model, x)
    reference = Segmenter(model, fused=False)(batch)
    assert reference.dtype == torch.uint8 and reference.shape == (2, 45, 61)
    assert torch.equal(reference.long(), expected.argmax(1))
    seg = Segmenter(model)
    fused = seg(batch)
    assert fused.dtype == torch.uint8 and fused.shape == (2, 45, 61)
    ties = disagreements_are_ties(fused, expected, 2 * network_gap(model, seg, x))
    assert ties <= 0.01 * fused.numel()


@pytest.mark.parametrize("flip_average", ["logits", "softmax"])
def test_flip_averages_with_the_mirrored_image(model, batch, flip_average):
    x = normalized(batch)
    plain, mirrored = whole_scores(model, x), whole_scores(model, x.flip(-1)).flip(-1)
    if flip_average == "logits":  # HRNet-Semantic-Segmentation: the mean of the logits
        expected = (plain + mirrored) / 2
    else:                         # mmsegmentation: the mean of the softmaxes
        expected = (plain.softmax(1) + mirrored.softmax(1)) / 2
    reference = Segmenter(model, flip=True, flip_average=flip_average, fused=False)(batch)
    disagreements_are_ties(reference, expected, 1e-6)
    seg = Segmenter(model, flip=True, flip_average=flip_average)
    fused = seg(batch)
    gap = 2 * max(network_gap(model, seg, x), network_gap(model, seg, x.flip(-1)))
    assert disagreements_are_ties(fused, expected, gap) <= 0.01 * fused.numel()
    # The flip changes the answer somewhere, so the mirrored image was really used.
    assert not torch.equal(fused.long(), plain.argmax(1))


def test_probabilities_are_the_softmax_of_the_full_resolution_logits(model, batch):
    x = normalized(batch)
    expected = whole_scores(model, x).softmax(1)
    torch.testing.assert_close(Segmenter(model, fused=False).probabilities(batch), expected, rtol=0, atol=1e-6)
    seg = Segmenter(model)
    got = seg.probabilities(batch)
    assert got.dtype == torch.float32 and got.shape == (2, 5, 45, 61)
    # The softmax moves by at most half the largest change of its inputs.
    torch.testing.assert_close(got, expected, rtol=0, atol=network_gap(model, seg, x) + 1e-6)
    one = seg.probabilities(batch[1])
    assert one.shape == (5, 45, 61)
    torch.testing.assert_close(one, got[1], rtol=0, atol=1e-6)


def test_inputs_one_image_numpy_batch_and_list(model, batch):
    seg = Segmenter(model)
    together = seg(batch)
    single = seg(batch[0])
    assert single.shape == (45, 61) and torch.equal(single, together[0])
    assert torch.equal(seg(batch.numpy()), together)
    other = images(1, 30, 22, seed=3)[0]
    maps = seg([batch[1].numpy(), other])
    assert isinstance(maps, list) and torch.equal(maps[0], together[1]) and maps[1].shape == (30, 22)
    empty = seg(batch[:0])
    assert empty.shape == (0, 45, 61)


def test_more_than_256_classes_give_int64_maps(batch):
    model = tiny_seg_model(num_classes=300)
    x = normalized(batch[:1])
    expected = whole_scores(model, x)
    reference = Segmenter(model, fused=False)(batch[:1])
    assert reference.dtype == torch.int64 and torch.equal(reference, expected.argmax(1))
    seg = Segmenter(model)
    fused = seg(batch[:1])
    assert fused.dtype == torch.int64 and int(fused.max()) > 255
    disagreements_are_ties(fused, expected, 2 * network_gap(model, seg, x))


def test_bf16_adds_no_rounding_after_the_network(batch):
    """In bf16 the network rounds; the steps after it do not: the class map is the argmax of the fp32 resize of
    the network's bf16 logits (to ties), where eager bf16 would resize in bf16. (End to end, the agreement with
    fp32 against eager bf16's is measured by benchmarks/seg_pipeline.py.)"""
    model = tiny_seg_model(align_corners=False)
    seg = Segmenter(model, dtype=torch.bfloat16)
    with torch.no_grad():
        logits = seg.net(normalized(batch).to(torch.bfloat16))
    in_fp32 = torch.nn.functional.interpolate(logits.float(), size=(45, 61), mode="bilinear", align_corners=False)
    fused = seg(batch)
    assert disagreements_are_ties(fused, in_fp32, 1e-5 * float(in_fp32.abs().max())) <= 0.001 * fused.numel()
    truth = Segmenter(model, fused=False)(batch)
    assert float((fused == truth).float().mean()) > 0.9


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def seg_model():
    return tiny_seg_model()


@pytest.mark.parametrize("cls, message", [(hrnet_fast.HighResolutionNet, "is a classification model"),
                                          (hrnet_fast.PoseHighResolutionNet, "is a pose model"),
                                          (torch.nn.Conv2d, "no task attribute")])
def test_refuses_other_tasks(cls, message):
    model = cls(3, 8, 1) if cls is torch.nn.Conv2d else cls(TINY)
    with pytest.raises(TypeError, match="needs a segmentation model") as info:
        Segmenter(model.eval())
    assert message in str(info.value)


def test_refuses_a_converted_or_training_model(seg_model):
    with pytest.raises(TypeError, match="not a converted one"):
        Segmenter(hrnet_fast.convert(seg_model))
    with pytest.raises(ValueError, match=r"training mode: call model.eval\(\)"):
        Segmenter(tiny_seg_model().train())


@pytest.mark.parametrize("bad, error, message", [
    (np.zeros((8, 8, 3), np.float32), TypeError, "uint8 RGB.*float32"),
    (torch.zeros(8, 8, 3), TypeError, "uint8 RGB.*torch.float32"),
    (torch.zeros(8, 8, 4, dtype=torch.uint8), ValueError, "3 channels.*got shape \\[8, 8, 4\\]"),
    (torch.zeros(1, 8, 8, 1, dtype=torch.uint8), ValueError, "3 channels"),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), ValueError, "channels first"),
    (torch.zeros(8, 8, dtype=torch.uint8), ValueError, "\\[H, W, 3\\] or \\[N, H, W, 3\\]"),
    ("image.png", TypeError, "got str"),
])
def test_refuses_bad_images(seg_model, bad, error, message):
    with pytest.raises(error, match=message):
        Segmenter(seg_model, fused=False)(bad)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="slide", crop_size=0, stride=8), "crop_size must be positive"),
    (dict(mode="slide", crop_size=16, stride=(0, 8)), "stride must be positive"),
    (dict(mode="slide", crop_size=16), "needs crop_size and stride"),
    (dict(mode="slide", crop_size=16, stride=2.5), "stride must be an int or a pair"),
    (dict(crop_size=16, stride=8), "apply to mode='slide'"),
    (dict(mode="tiles"), "mode must be one of"),
    (dict(flip_average="max"), "flip_average must be one of"),
    (dict(mean=(123.675, 116.28, 103.53)), "0..1 units"),
    (dict(std=(0.2, 0.2)), "std must be 3 values"),
    (dict(std=(0.2, 0.0, 0.2)), "std must be positive"),
])
def test_refuses_bad_settings(seg_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Segmenter(seg_model, fused=False, **kwargs)


@pytest.mark.parametrize("crop, stride, message", [((40, 16), (8, 8), "crop_size 40x16 is larger than the 32x24"),
                                                   ((16, 16), (8, 20), "stride 8x20 is larger than crop_size 16x16")])
def test_refuses_windows_that_do_not_fit(seg_model, crop, stride, message):
    seg = Segmenter(seg_model, mode="slide", crop_size=crop, stride=stride, fused=False)
    with pytest.raises(ValueError, match=message):
        seg(torch.zeros(32, 24, 3, dtype=torch.uint8))
