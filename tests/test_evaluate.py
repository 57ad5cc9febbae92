"""``hrnet-fast eval`` end to end on a small generated image folder.

Expected figures never come from the code under test: the test runs the same weights with plain ``model(x)`` on
torchvision-preprocessed images, then either reads the folder labels against those predictions or writes a labels
file whose answers are known by construction (each image labelled with the class at a chosen rank of its logits).
"""
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import hrnet_fast
from hrnet_fast.cli import main as cli_main
from hrnet_fast.evaluate import Shard, StridedShardSampler, progress_enabled
from hrnet_fast.imagefolder import IMAGENET_MEAN, IMAGENET_STD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "hrnet_w18_small"
NUM_CLASSES = 6
RESIZE, CROP = 72, 64
IMAGES_PER_CLASS = (3, 2, 3, 2, 3, 2)  # 15 images: not divisible by the batch size (4) nor by 2 processes
# Labels-file construction: image i is labelled with the class at rank RANKS[i] of its independent logits
# (0 = the prediction). Top-1 counts rank 0, top-5 counts ranks 0-4; rank 5 is the least likely class.
RANKS = (0, 1, 5, 0, 2, 0, 5, 3, 0, 4, 1, 0, 5, 0, 2)
KNOWN_TOP1 = sum(r == 0 for r in RANKS)   # 6
KNOWN_TOP5 = sum(r < 5 for r in RANKS)    # 12
# Logit gaps that decide top-1/top-5 must exceed this, so rounding differences between batchings (fp32, ~1e-6)
# cannot move an image across a boundary.
MARGIN = 1e-4


def write_image(path, width: int, height: int, seed: int) -> None:
    """A noise image with a bright rectangle, so different images get different predictions."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
    pixels[y:y + height // 3, x:x + width // 3] = rng.integers(0, 256, 3, dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The image folder, a checkpoint, the labels file built by construction, and the independent logits."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "val"
    paths, folder_labels = [], []
    for c, count in enumerate(IMAGES_PER_CLASS):
        (data / f"class_{c}").mkdir(parents=True)
        for i in range(count):
            seed = 10 * c + i
            # Sizes needing down- and up-sampling, landscape and portrait, odd sizes; PNG and JPEG.
            width, height = (137 + 31 * i, 83 + 7 * c) if (c + i) % 2 else (61 + 5 * c, 149 - 9 * i)
            path = data / f"class_{c}" / f"img_{i}.{'png' if seed % 2 else 'jpg'}"
            write_image(path, width, height, seed)
            paths.append(path)
            folder_labels.append(c)

    torch.manual_seed(0)
    model = hrnet_fast.create_model(MODEL, num_classes=NUM_CLASSES)
    hrnet_fast.calibrate_bn(model, (CROP, CROP))
    checkpoint = root / "checkpoint.pth"
    torch.save(model.state_dict(), checkpoint)

    transform = transforms.Compose([transforms.Resize(RESIZE), transforms.CenterCrop(CROP), transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    with torch.no_grad():
        logits = model(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths]))
    ranked_logits, ranked_classes = logits.sort(dim=1, descending=True)
    gaps = torch.stack([ranked_logits[:, 0] - ranked_logits[:, 1], ranked_logits[:, 4] - ranked_logits[:, 5]])
    assert gaps.min() > MARGIN, f"test data too close to a decision boundary: gaps {gaps}"
    predictions = ranked_classes[:, 0]
    assert len(set(predictions.tolist())) > 1, "the test model predicts one class for every image"

    labels_file = root / "labels.txt"
    labels_file.write_text("".join(f"{p.relative_to(data)} {int(ranked_classes[i, r])}\n"
                                   for i, (p, r) in enumerate(zip(paths, RANKS))))
    folder_labels = torch.tensor(folder_labels)
    return dict(root=root, data=data, checkpoint=checkpoint, labels=labels_file, paths=paths,
                folder_top1=int((predictions == folder_labels).sum()),
                folder_top5=int((ranked_classes[:, :5] == folder_labels[:, None]).any(dim=1).sum()))


def eval_args(case, *extra, data=None):
    return ["eval", "--model", MODEL, "--checkpoint", str(case["checkpoint"]), "--data", str(data or case["data"]),
            "--num-classes", str(NUM_CLASSES), "--resize", str(RESIZE), "--crop", str(CROP),
            "--batch-size", "4", "--workers", "0", *extra]


def run_eval(case, tmp_path, *extra, data=None):
    """Runs the CLI in this process; returns (exit status, JSON report)."""
    report = tmp_path / "report.json"
    status = cli_main(eval_args(case, "--json", str(report), *extra, data=data))
    return status, json.loads(report.read_text())


def test_image_folder_counts_match_independent_forward(case, tmp_path, capsys):
    status, report = run_eval(case, tmp_path, "--no-converted")
    assert status == 0
    out = capsys.readouterr().out
    reference = report["results"]["reference"]
    assert (report["images"], report["skipped"], report["world_size"], report["top5_k"]) == (15, 0, 1, 5)
    assert (reference["correct_top1"], reference["correct_top5"]) == (case["folder_top1"], case["folder_top5"])
    assert reference["top1"] == pytest.approx(100 * case["folder_top1"] / 15)
    assert list(report["results"]) == ["reference"] and report["top1_agreement"] is None
    assert reference["forward_images_per_s"] > 0 and report["images_per_s"] > 0
    row = f"| reference | fp32 | eager | {100 * case['folder_top1'] / 15:.3f} | {100 * case['folder_top5'] / 15:.3f} |"
    assert row in out, out


def test_labels_file_counts_known_by_construction(case, tmp_path):
    status, report = run_eval(case, tmp_path, "--no-converted", "--labels", str(case["labels"]))
    assert status == 0
    reference = report["results"]["reference"]
    assert (report["images"], reference["correct_top1"], reference["correct_top5"]) == (15, KNOWN_TOP1, KNOWN_TOP5)


def test_converted_fp32_agrees_with_reference(case, tmp_path, capsys):
    """Fails (ImportError/AttributeError) rather than skipping if convert() is missing."""
    status, report = run_eval(case, tmp_path, "--labels", str(case["labels"]), "--dtype", "fp32")
    assert status == 0
    for name in ("reference", "converted"):
        result = report["results"][name]
        assert (result["correct_top1"], result["correct_top5"], result["dtype"]) == (KNOWN_TOP1, KNOWN_TOP5, "fp32")
    assert report["top1_agreement"]["same_top1"] == 15
    assert report["results"]["converted"]["backend"].startswith("auto: conv_bn_act=")
    assert "top-1 agreement, reference vs converted: 100.000 % (15 / 15 images)" in capsys.readouterr().out


def test_converted_only(case, tmp_path):
    status, report = run_eval(case, tmp_path, "--labels", str(case["labels"]), "--no-reference")
    assert status == 0
    assert list(report["results"]) == ["converted"] and report["top1_agreement"] is None
    converted = report["results"]["converted"]
    assert (converted["correct_top1"], converted["correct_top5"]) == (KNOWN_TOP1, KNOWN_TOP5)


@pytest.mark.parametrize("models", [["--no-converted"], []], ids=["reference", "reference+converted"])
def test_two_processes_equal_one(case, tmp_path, models):
    """torchrun with 2 gloo ranks on 15 images (7 + 8, no padding): the same counts as one process."""
    single = tmp_path / "single.json"
    assert cli_main(eval_args(case, "--labels", str(case["labels"]), "--json", str(single), *models)) == 0
    double = tmp_path / "double.json"
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "hrnet_fast", *eval_args(case, "--labels", str(case["labels"]), "--json",
                                                          str(double), *models)],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert (two["world_size"], two["images"]) == (2, 15)
    assert {k: (v["correct_top1"], v["correct_top5"]) for k, v in two["results"].items()} == \
        {k: (KNOWN_TOP1, KNOWN_TOP5) for k in one["results"]}
    assert {k: (v["correct_top1"], v["correct_top5"]) for k, v in one["results"].items()} == \
        {k: (KNOWN_TOP1, KNOWN_TOP5) for k in one["results"]}
    assert two["top1_agreement"] == one["top1_agreement"]
    assert proc.stdout.count("| model | dtype |") == 1, proc.stdout  # only rank 0 prints


def test_shards_partition_the_dataset():
    for size in (0, 1, 7, 15):
        for world_size in (1, 2, 3):
            shards = [list(StridedShardSampler(size, Shard(r, world_size))) for r in range(world_size)]
            assert sorted(i for shard in shards for i in shard) == list(range(size))
            assert [len(StridedShardSampler(size, Shard(r, world_size))) for r in range(world_size)] == \
                [len(s) for s in shards]
    assert list(StridedShardSampler(7, Shard(1, 3))) == [1, 4]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_rank_0_of_a_terminal():
    assert progress_enabled(Shard(0, 1), no_progress=False, stream=Terminal())
    assert not progress_enabled(Shard(0, 1), no_progress=True, stream=Terminal())
    assert not progress_enabled(Shard(1, 2), no_progress=False, stream=Terminal())
    assert not progress_enabled(Shard(0, 1), no_progress=False, stream=io.StringIO())


def test_unreadable_image_is_skipped_and_counted(case, tmp_path, capsys):
    data = tmp_path / "val"
    shutil.copytree(case["data"], data)
    broken = data / "class_2" / "broken.jpg"
    good_jpeg = next((data / "class_0").glob("*.jpg")).read_bytes()
    broken.write_bytes(good_jpeg[: len(good_jpeg) // 3])  # truncated JPEG
    status, report = run_eval(case, tmp_path, "--no-converted", "--workers", "1", data=data)
    assert status == 0
    reference = report["results"]["reference"]
    assert (report["images"], report["skipped"], report["skipped_paths"]) == (15, 1, [str(broken)])
    assert (reference["correct_top1"], reference["correct_top5"]) == (case["folder_top1"], case["folder_top5"])
    assert f"skipped 1 unreadable image(s), not counted: {broken}" in capsys.readouterr().out


def make_folder(data, classes, image_bytes):
    """``classes``: {class folder: [(file name, content)]}; content "image" is a copy of a valid test image."""
    data.mkdir()
    for name, files in classes.items():
        (data / name).mkdir()
        for file_name, content in files:
            (data / name / file_name).write_bytes(image_bytes if content == "image" else content)


BAD_FOLDERS = {  # problem: (class folders and their files, expected message)
    "no class folders": ({}, "has no class sub-folders"),
    "empty class": ({"a": [("1.jpg", "image")], "b": []}, "have no images: b"),
    "no images": ({"a": [("notes.txt", b"x")]}, "no images under"),
    "all unreadable": ({"a": [("bad.png", b"not a png")]}, "none of the 1 images could be read"),
    "too many classes": ({f"c{c}": [("1.jpg", "image")] for c in range(NUM_CLASSES + 1)},
                         "has 7 class folders, but the model has 6 classes"),
}
BAD_ARGUMENTS = {  # problem: (extra arguments, expected message)
    "unknown model": (["--model", "hrnet_w99"], "unknown model name 'hrnet_w99'"),
    "other variant": (["--model", "hrnet_w18_small_v2"], "into hrnet_w18_small_v2"),
    "missing checkpoint": (["--checkpoint", "nope.pth"], "checkpoint not found: nope.pth"),
    "crop > resize": (["--resize", "64", "--crop", "96"], "must not exceed resize"),
    "bad input size": (["--crop", "48"], "cannot take a 48x48 input"),
    "nothing to run": (["--no-reference"], "leave nothing to evaluate"),
    "label >= classes": (["--num-classes", "2", "--labels", "LABELS"], "but the model has 2 classes"),
    "missing data folder": (["--data", "missing_folder"], "data folder not found: missing_folder"),
    "missing json folder": (["--json", "no_such_dir/report.json"], "its folder does not exist"),
}


@pytest.mark.parametrize("problem", list(BAD_FOLDERS) + list(BAD_ARGUMENTS))
def test_user_errors_exit_2_with_a_message(case, tmp_path, capsys, problem):
    if problem in BAD_FOLDERS:
        classes, expected = BAD_FOLDERS[problem]
        make_folder(tmp_path / "val", classes, case["paths"][0].read_bytes())
        args = eval_args(case, "--no-converted", data=tmp_path / "val")
        if problem == "no class folders":
            shutil.copy(case["paths"][0], tmp_path / "val" / "a.jpg")
    else:
        extra, expected = BAD_ARGUMENTS[problem]
        extra = [str(case["labels"]) if a == "LABELS" else a for a in extra]
        args = eval_args(case, "--no-converted", *extra)  # later options override eval_args' own
    assert cli_main(args) == 2  # an exception escaping here instead would be a traceback
    err = capsys.readouterr().err
    prefix = "hrnet-fast eval: error: "  # a warning may come before it, a checkpoint report may follow it
    assert err.count(prefix) == 1 and expected in err[err.index(prefix):], err


def test_user_error_from_the_command_line_has_no_traceback(case):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "hrnet_fast", *eval_args(case, "--model", "hrnet_w99")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown model name 'hrnet_w99'" in proc.stderr, proc.stderr
