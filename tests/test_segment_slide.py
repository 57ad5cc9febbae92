"""Sliding-window inference against a loop written here from mmsegmentation's stated ``slide_inference``
semantics; the window layout against hand-computed cases; the banded full-resolution rows against F.interpolate."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hrnet_fast import Segmenter
from hrnet_fast.segment import tiled
from hrnet_fast.segment.windows import Window, slide_windows
from segment_support import disagreements_are_ties, images, network_gap, normalized, tiny_seg_model

pytestmark = pytest.mark.usefixtures("one_thread")


def mmseg_slide(model, x, crop, stride, num_classes):
    """mmsegmentation's slide inference as its documentation states it: grid counts, windows pulled back inside the
    image, each window's logits resized to the window, summed into a zero-padded canvas, divided by the count."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    n, _, h_img, w_img = x.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = x.new_zeros((n, num_classes, h_img, w_img))
    count = x.new_zeros((n, 1, h_img, w_img))
    with torch.no_grad():
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y1, x1 = h_idx * h_stride, w_idx * w_stride
                y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                logit = F.interpolate(model(x[:, :, y1:y2, x1:x2]), size=(y2 - y1, x2 - x1), mode="bilinear",
                                      align_corners=model.align_corners)
                preds += F.pad(logit, (x1, w_img - x2, y1, h_img - y2))
                count[:, :, y1:y2, x1:x2] += 1
    assert int((count == 0).sum()) == 0
    return preds / count


def test_window_layout_hand_computed():
    # Rows: 11 - 4 + 3 - 1 = 9, 9 // 3 + 1 = 4 windows at 0, 3, 6, 9 -> the last pulled back to 7..11.
    # Columns: 6 - 6 + 2 - 1 = 1, 1 // 2 + 1 = 1 window (the crop is the image's width).
    assert slide_windows(11, 6, (4, 6), (3, 2)) == [Window(0, 4, 0, 6, 0), Window(3, 7, 0, 6, 1),
                                                   Window(6, 10, 0, 6, 2), Window(7, 11, 0, 6, 3)]
    # 10 - 4 + 3 - 1 = 8 -> 3 windows, the last one ending at the border exactly.
    assert [(w.y1, w.y2) for w in slide_windows(10, 4, (4, 4), (3, 4))] == [(0, 4), (3, 7), (6, 10)]
    assert [(w.x1, w.x2) for w in slide_windows(4, 9, (4, 5), (4, 5))] == [(0, 5), (4, 9)]


@pytest.mark.parametrize("shape, crop, stride", [((45, 61), (32, 40), (20, 24)),   # 2 x 2 windows
                                                 ((45, 61), (24, 32), (16, 20)),   # 3 x 3, last pulled back
                                                 ((37, 50), (37, 20), (37, 15))])  # one row, crop = height
def test_slide_matches_the_stated_semantics(shape, crop, stride, monkeypatch):
    model = tiny_seg_model(align_corners=False)
    batch = images(2, *shape)
    x = normalized(batch)
    expected = mmseg_slide(model, x, crop, stride, 5)
    reference = Segmenter(model, mode="slide", crop_size=crop, stride=stride, fused=False)
    assert torch.equal(reference(batch).long(), expected.argmax(1))
    torch.testing.assert_close(reference.probabilities(batch), expected.softmax(1), rtol=0, atol=1e-6)
    seg = Segmenter(model, mode="slide", crop_size=crop, stride=stride)
    gap = 2 * max(network_gap(model, seg, x[:, :, w.y1:w.y2, w.x1:w.x2]) for w in slide_windows(*shape, crop, stride))
    whole_band = seg(batch)
    assert disagreements_are_ties(whole_band, expected, gap) <= 0.01 * whole_band.numel()
    # Bands of one or two rows: every band border and every window dropped on the way down.
    monkeypatch.setattr(tiled, "BAND_BYTES", 2 * 5 * shape[1] * 4 * 2 - 1)
    assert torch.equal(seg(batch), whole_band)
    torch.testing.assert_close(seg.probabilities(batch), expected.softmax(1), rtol=0, atol=gap / 2 + 1e-6)


def test_slide_with_flip_averages_softmaxes_as_mmsegmentation(monkeypatch):
    model = tiny_seg_model(align_corners=True)
    batch = images(1, 45, 61, seed=5)
    x = normalized(batch)
    crop, stride = (32, 40), (20, 24)
    plain = mmseg_slide(model, x, crop, stride, 5)
    mirrored = mmseg_slide(model, x.flip(-1), crop, stride, 5).flip(-1)
    expected = (plain.softmax(1) + mirrored.softmax(1)) / 2
    kwargs = dict(mode="slide", crop_size=crop, stride=stride, flip=True, flip_average="softmax")
    disagreements_are_ties(Segmenter(model, fused=False, **kwargs)(batch), expected, 1e-6)
    monkeypatch.setattr(tiled, "BAND_BYTES", 5 * 61 * 4 * 3)
    seg = Segmenter(model, **kwargs)
    gap = 2 * max(network_gap(model, seg, im[:, :, w.y1:w.y2, w.x1:w.x2]) for im in (x, x.flip(-1))
                  for w in slide_windows(45, 61, crop, stride))
    fused = seg(batch)
    assert disagreements_are_ties(fused, expected, gap) <= 0.01 * fused.numel()
    torch.testing.assert_close(seg.probabilities(batch), expected, rtol=0, atol=gap / 2 + 1e-6)


def test_each_window_runs_once_and_is_dropped_below_its_rows(monkeypatch):
    windows = slide_windows(40, 30, (16, 12), (8, 9))
    runs = []

    def run(w):
        runs.append(w)
        return torch.full((1, 2, 4, 3), float(w.row))

    monkeypatch.setattr(tiled, "BAND_BYTES", 2 * 30 * 4 * 3)  # 3-row bands
    scores = tiled.WindowedScores(windows, run, align_corners=False, device=torch.device("cpu"))
    held = 0
    for r0 in range(0, 40, 3):
        scores.band(r0, min(40, r0 + 3), (1, 2, 30))
        held = max(held, len(scores.logits))
        assert all(windows[k].y2 > r0 for k in scores.logits)
    assert sorted(runs) == sorted(windows)           # each window once
    # 4 rows x 3 columns of windows; a 3-row band meets at most 3 window rows (16 + 3 - 1 rows span 3 strides of 8).
    assert len(windows) == 12 and held == 3 * 3


@pytest.mark.parametrize("size_in, size_out", [((7, 9), (13, 17)), ((5, 4), (20, 16)), ((13, 17), (7, 9)),
                                               ((1, 3), (4, 5)), ((6, 6), (1, 1))])
@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_rows_are_the_rows_of_f_interpolate(size_in, size_out, align_corners):
    logits = torch.randn(2, 3, *size_in, generator=torch.Generator().manual_seed(1))
    full = F.interpolate(logits, size=size_out, mode="bilinear", align_corners=align_corners)
    for r0, r1 in [(0, size_out[0]), (0, 1), (size_out[0] // 2, size_out[0])]:
        got = tiled.resize_rows(logits.to(torch.bfloat16).float(), *size_out, r0, r1, align_corners)
        want = F.interpolate(logits.to(torch.bfloat16).float(), size=size_out, mode="bilinear",
                             align_corners=align_corners)[:, :, r0:r1]
        torch.testing.assert_close(got, want, rtol=1.3e-6, atol=1e-6)
        torch.testing.assert_close(tiled.resize_rows(logits, *size_out, r0, r1, align_corners), full[:, :, r0:r1],
                                   rtol=1.3e-6, atol=1e-6)
