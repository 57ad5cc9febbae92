"""``hrnet-fast pose`` and ``hrnet-fast eval --task pose`` on a small generated COCO set (3 images, W32 at 64x64
crops), and the COCOeval scoring against a hand-computed AP."""
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
from hrnet_fast.pose.coco import image_entries, read_annotations
from hrnet_fast.pose.evaluate import coco_keypoint_scores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# pycocotools' per-joint OKS sigmas (COCO keypoints, cocoeval.py).
SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
PEOPLE = {1: [[10, 8, 40, 60], [50, 20, 30, 50]], 2: [[5, 5, 60, 70]], 3: []}   # image id -> COCO [x, y, w, h]


def person(ann_id, image_id, bbox):
    x, y, w, h = bbox
    gen = np.random.default_rng(ann_id)
    points = np.stack((x + w * gen.uniform(0.2, 0.8, 17), y + h * gen.uniform(0.2, 0.8, 17), np.full(17, 2)), 1)
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": bbox, "area": w * h * 0.6,
            "num_keypoints": 17, "keypoints": [round(float(v), 2) for v in points.flatten()]}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    images = root / "val"
    images.mkdir()
    gen = np.random.default_rng(0)
    entries, anns = [], []
    for image_id, boxes in PEOPLE.items():
        name = f"{image_id:012d}.png"
        Image.fromarray(gen.integers(0, 256, (90, 110, 3), dtype=np.uint8)).save(images / name)
        entries.append({"id": image_id, "file_name": name, "width": 110, "height": 90})
        anns += [person(10 * image_id + k, image_id, b) for k, b in enumerate(boxes)]
    ann_file = root / "person_keypoints.json"
    ann_file.write_text(json.dumps({"images": entries, "annotations": anns,
                                    "categories": [{"id": 1, "name": "person", "keypoints": [], "skeleton": []}]}))
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(hrnet_fast.create_model("pose_hrnet_w32"), (64, 64), steps=1, batch=2)
    checkpoint = root / "pose_w32.pth"
    torch.save(model.state_dict(), checkpoint)
    dets = root / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [12, 9, 38, 58], "score": 0.9},
                                {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.1},
                                {"image_id": 2, "category_id": 2, "bbox": [0, 0, 50, 50], "score": 0.9}]))
    return dict(images=images, annotations=ann_file, checkpoint=checkpoint, dets=dets, anns=anns)


def common(coco):
    return ["--model", "pose_hrnet_w32", "--checkpoint", str(coco["checkpoint"]), "--images", str(coco["images"]),
            "--annotations", str(coco["annotations"]), "--input-size", "64x64", "--workers", "0", "--no-progress",
            "--device", "cpu"]


@pytest.fixture(scope="module")
def results(coco, tmp_path_factory):
    """``hrnet-fast pose`` on the ground-truth boxes with the reference pipeline."""
    out = tmp_path_factory.mktemp("pose") / "results.json"
    assert cli_main(["pose", *common(coco), "--reference", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_pose_writes_coco_keypoint_results(coco, results):
    assert [r["image_id"] for r in results] == [1, 1, 2]            # ground-truth boxes, image by image
    for r, ann in zip(results, coco["anns"]):
        assert r["category_id"] == 1 and len(r["keypoints"]) == 51 and r["score"] >= 0
        xs, ys, s = (np.array(r["keypoints"][i::3]) for i in range(3))
        x, y, w, h = ann["bbox"]
        side = max(w, h) * 1.25 / 2 + 1e-3                          # inside the padded square crop (64x64)
        assert np.all(np.abs(xs - (x + w / 2)) <= side) and np.all(np.abs(ys - (y + h / 2)) <= side)
        # The official rescoring: box score (1 for ground truth) x mean of the joint scores above 0.2.
        expected = s[s > 0.2].mean() if (s > 0.2).any() else 0.0
        assert math.isclose(r["score"], expected, rel_tol=1e-4)     # joint scores are written to 1e-3


def test_detections_keep_persons_above_the_score(coco):
    annotations = read_annotations(str(coco["annotations"]))
    entries = image_entries(str(coco["images"]), annotations, str(coco["dets"]), min_score=0.5)
    assert [(e.image_id, e.boxes, e.box_scores) for e in entries] == \
        [(1, [[12.0, 9.0, 50.0, 67.0]], [0.9]), (2, [], []), (3, [], [])]   # xywh -> xyxy; low score, non-person out
    assert entries[0].path == str(coco["images"] / "000000000001.png")    # the annotation file's name
    entries = image_entries("val", None, str(coco["dets"]))
    assert [(e.image_id, e.path) for e in entries] == [(1, os.path.join("val", "000000000001.jpg"))]
    gt = image_entries("val", annotations)
    assert [len(e.boxes) for e in gt] == [2, 1, 0] and gt[0].boxes[1] == [50.0, 20.0, 80.0, 70.0]


def test_bad_box_files_are_named(coco, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [10, 10, -5, 20], "score": 1.0}]))
    with pytest.raises(ValueError, match="entry 0: bbox .* negative or NaN width"):
        image_entries("val", None, str(bad))
    bad.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(ValueError, match="JSON list of detections"):
        image_entries("val", None, str(bad))


def test_pose_errors_are_messages(coco, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    assert cli_main(["pose", *common(coco), "--images", str(tmp_path / "none"), "--out", out]) == 2
    assert "--images" in capsys.readouterr().err
    assert cli_main(["pose", *common(coco), "--input-size", "64", "--out", out]) == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [10, 10, float("nan"), 20], "score": 1.0}]))
    assert cli_main(["pose", *common(coco), "--boxes", str(bad), "--out", out]) == 2
    assert "negative or NaN width" in capsys.readouterr().err
    assert cli_main(["pose", *common(coco), "--model", "hrnet_w18_small", "--out", out]) == 2
    assert "pose checkpoint" in capsys.readouterr().err


def test_oks_ap_by_hand(coco, tmp_path):
    """One result per person with every joint moved so its OKS term is exp(-e) = 0.77: OKS 0.77 matches at the
    thresholds 0.50 ... 0.75 (6 of 10) and not above, so AP = 0.6 (AP = 1.0 for the exact keypoints)."""
    results, exact = [], []
    for ann in coco["anns"]:
        kp = np.array(ann["keypoints"], dtype=np.float64).reshape(17, 3)
        exact.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": kp.flatten().tolist(), "score": 1})
        d = np.sqrt(-math.log(0.77) * 2 * (2 * SIGMAS) ** 2 * ann["area"])
        moved = kp.copy()
        moved[:, 0] += d
        results.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": moved.flatten().tolist(),
                        "score": 1})
    assert coco_keypoint_scores(str(coco["annotations"]), exact)["AP"] == pytest.approx(1.0)
    scores = coco_keypoint_scores(str(coco["annotations"]), results)
    assert scores["AP"] == pytest.approx(0.6) and scores["AP50"] == pytest.approx(1.0)
    assert scores["AP75"] == pytest.approx(1.0) and scores["AR"] == pytest.approx(0.6)


def eval_args(coco, report):
    return ["eval", "--task", "pose", *common(coco), "--no-converted", "--json", str(report)]


def test_eval_pose_two_processes_equal_one(coco, results, tmp_path):
    single = tmp_path / "single.json"
    assert cli_main(eval_args(coco, single)) == 0
    one = json.loads(single.read_text())
    assert one["results"]["reference"]["people"] == 3 and one["world_size"] == 1
    # The report's figures are COCOeval's on the pose command's results for the same settings.
    expected = coco_keypoint_scores(str(coco["annotations"]), results)
    assert {k: one["results"]["reference"][k] for k in expected} == expected
    double = tmp_path / "double.json"
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "hrnet_fast", *eval_args(coco, double)],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    two = json.loads(double.read_text())
    assert two["world_size"] == 2
    assert two["results"]["reference"]["people"] == 3
    assert {k: two["results"]["reference"][k] for k in expected} == expected
    assert proc.stdout.count("| pipeline |") == 1, proc.stdout      # only rank 0 prints


def test_eval_pose_needs_annotations(coco, tmp_path, capsys):
    args = ["eval", "--task", "pose", *common(coco)]
    args.remove("--annotations")
    args.remove(str(coco["annotations"]))
    assert cli_main([*args, "--boxes", str(coco["dets"])]) == 2
    assert "--annotations" in capsys.readouterr().err
