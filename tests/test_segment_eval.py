"""``hrnet-fast seg`` and ``hrnet-fast eval --task seg``: PNG class maps, metrics against a hand-computed confusion
matrix and against the test's own counting, torchrun's figures equal one process's, and the refused inputs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import hrnet_fast
from hrnet_fast.cli import main as cli_main
from hrnet_fast.segment.evaluate import confusion_matrix, metrics
from segment_support import normalized, whole_scores

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "seg_hrnetv2_w18_small"
SIZES = [(40, 56), (33, 47), (40, 56)]


def test_metrics_of_a_hand_computed_confusion_matrix():
    labels = torch.tensor([[0, 1, 1], [1, 2, 0]])
    truth = torch.tensor([[0, 1, 2], [255, 255, 0]])
    cm = confusion_matrix(labels, truth, 4, 255)
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 0], expected[1, 1], expected[2, 1] = 2, 1, 1  # the two 255 pixels are not scored
    assert torch.equal(cm, expected)
    m = metrics(cm)
    # IoU: class 0 2/(2+2-2), class 1 1/(1+2-1), class 2 0/(1+0-0), class 3 in neither: undefined, not averaged.
    assert m["IoU"] == [1.0, 0.5, 0.0, None] and m["mIoU"] == pytest.approx(0.5)
    assert m["Acc"] == [1.0, 1.0, 0.0, None] and m["mAcc"] == pytest.approx(2 / 3)
    assert m["aAcc"] == pytest.approx(3 / 4) and m["pixels"] == 4
    assert math.isnan(metrics(torch.zeros(2, 2, dtype=torch.int64))["mIoU"])


def test_a_mask_value_that_is_no_class_is_refused():
    with pytest.raises(ValueError, match="mask value 7 is neither a class \\(0..3\\) nor the ignore index 255"):
        confusion_matrix(torch.zeros(2, 2), torch.tensor([[0, 7], [255, 1]]), 4, 255)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A seg_hrnetv2_w18_small checkpoint (calibrated BN), three images (one in a sub-folder) and their masks."""
    root = tmp_path_factory.mktemp("seg")
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(hrnet_fast.create_model(MODEL, align_corners=False), (40, 56), steps=1, batch=2)
    checkpoint = root / "seg.pth"
    torch.save(model.state_dict(), checkpoint)
    gen = np.random.default_rng(0)
    names = ["a.png", "b.jpg", os.path.join("sub", "c.png")]
    for folder in ("images", "masks", "images/sub", "masks/sub"):
        (root / folder).mkdir()
    for name, (h, w) in zip(names, SIZES):
        image = gen.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / name, quality=100)
        mask = gen.integers(0, 19, (h, w)).astype(np.uint8)
        mask[: h // 4] = 255
        Image.fromarray(mask).save(root / "masks" / (os.path.splitext(name)[0] + "_gt.png"))
    return dict(root=root, model=model, checkpoint=checkpoint, names=names)


def predictions(case):
    """The test's own class maps: the images as PIL decodes them, normalised, the eager model, resize, argmax."""
    out = []
    for name in case["names"]:
        rgb = torch.from_numpy(np.array(Image.open(case["root"] / "images" / name).convert("RGB")))[None]
        out.append(whole_scores(case["model"], normalized(rgb)).argmax(1)[0])
    return out


def eval_args(case, *extra):
    root = case["root"]
    return ["eval", "--task", "seg", "--model", MODEL, "--checkpoint", str(case["checkpoint"]), "--images",
            str(root / "images"), "--masks", str(root / "masks"), "--mask-suffix", "_gt", "--align-corners", "false",
            "--no-progress", *extra]


def test_seg_writes_palette_and_raw_masks(case, tmp_path):
    root = case["root"]
    common = ["seg", "--model", MODEL, "--checkpoint", str(case["checkpoint"]), "--images", str(root / "images"),
              "--align-corners", "false", "--no-progress"]
    assert cli_main(common + ["--out", str(tmp_path / "ref"), "--reference"]) == 0
    assert cli_main(common + ["--out", str(tmp_path / "raw"), "--style", "raw"]) == 0
    for name, expected in zip(case["names"], predictions(case)):
        stem = os.path.splitext(name)[0] + ".png"
        palette = Image.open(tmp_path / "ref" / stem)
        assert palette.mode == "P" and palette.getpalette()[:6] == [128, 64, 128, 244, 35, 232]  # road, sidewalk
        assert np.array_equal(np.asarray(palette), expected.numpy())
        raw = Image.open(tmp_path / "raw" / stem)
        assert raw.mode == "L" and raw.size == palette.size
        # The fused pipeline's network rounds differently from eager PyTorch: near-ties may go either way.
        assert (np.asarray(raw) == expected.numpy()).mean() > 0.99


def test_eval_seg_figures_equal_the_tests_own_count(case, tmp_path):
    report_path = tmp_path / "report.json"
    assert cli_main(eval_args(case, "--reference", "--json", str(report_path))) == 0
    report = json.loads(report_path.read_text())
    counts = np.zeros((19, 19), dtype=np.int64)
    for name, pred in zip(case["names"], predictions(case)):
        truth = np.asarray(Image.open(case["root"] / "masks" / (os.path.splitext(name)[0] + "_gt.png")))
        for t, p in zip(truth.flatten(), pred.numpy().flatten()):
            if t != 255:
                counts[t, p] += 1
    assert report["confusion"] == counts.tolist()
    tp, gt, pred = np.diag(counts), counts.sum(1), counts.sum(0)
    iou = tp / (gt + pred - tp)  # every class occurs in these random masks
    assert report["IoU"] == pytest.approx(iou.tolist()) and report["mIoU"] == pytest.approx(iou.mean())
    assert report["aAcc"] == pytest.approx(tp.sum() / counts.sum())
    assert report["images"] == 3 and report["classes"][0] == "road"


def test_two_processes_equal_one(case, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert cli_main(eval_args(case, "--reference", "--json", str(one))) == 0
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "hrnet_fast", *eval_args(case, "--reference", "--json", str(two))],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    single, double = json.loads(one.read_text()), json.loads(two.read_text())
    assert double["world_size"] == 2 and double["confusion"] == single["confusion"]
    assert (double["mIoU"], double["aAcc"]) == (single["mIoU"], single["aAcc"])
    assert proc.stdout.count("| class | IoU (%) |") == 1  # only rank 0 prints


def test_refused_inputs(case, tmp_path, capsys):
    bad = tmp_path / "masks"
    (bad / "sub").mkdir(parents=True)
    for name, (h, w) in zip(case["names"], SIZES):
        Image.fromarray(np.zeros((h, w + (name == "a.png")), np.uint8)).save(bad / (os.path.splitext(name)[0] + ".png"))
    cases = [
        (eval_args(case)[:-1] + ["--masks", str(bad), "--mask-suffix", "", "--no-progress"],
         "masks must be the size of their images"),
        (eval_args(case, "--mask-suffix", "_other"), "3 image(s) have no mask"),
        (["eval", "--task", "seg", "--model", MODEL, "--checkpoint", str(case["checkpoint"])], "needs --images"),
        (eval_args(case)[:4] + ["hrnet_w18"] + eval_args(case)[5:], "is a classification model"),
        (["eval", "--model", "hrnet_w18", "--checkpoint", str(case["checkpoint"])], "--data is required"),
        (eval_args(case, "--mode", "slide", "--crop-size", "64x64", "--stride", "32"), "larger than the"),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        assert message in capsys.readouterr().err, (argv, message)
