"""COCO keypoint files: the people to run (ground-truth boxes from a ``person_keypoints_*.json``, or a detector's
boxes in COCO's results format), the images they are on, and the keypoint results ``COCOeval`` reads.

Conventions (the official deep-high-resolution-net COCO pipeline):
- ground-truth boxes: every non-crowd person annotation with at least one labelled keypoint and a box of positive
  width and height; COCO's ``bbox`` is ``[x, y, w, h]``, a person box ``(x, y, x + w, y + h)``;
- detections: a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, persons
  (``category_id`` 1) at or above ``min_score`` kept;
- an image is the annotation file's ``file_name`` for its id, else COCO's own name, the id in 12 digits + ``.jpg``;
- a result's ``keypoints`` are ``[x1, y1, s1, x2, y2, s2, ...]`` with each joint's heatmap score as the third value,
  and its ``score`` is the box score times the mean of the joint scores above 0.2 (the official rescoring; no
  OKS non-maximum suppression is applied).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

PERSON = 1
JOINT_SCORE_THRESHOLD = 0.2


@dataclass
class ImageEntry:
    """One image and the people to estimate on it."""
    image_id: int
    path: str
    boxes: List[List[float]] = field(default_factory=list)      # xyxy
    box_scores: List[float] = field(default_factory=list)


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"the {what} {path} is not JSON: {e}") from None


def read_annotations(path: str) -> dict:
    """A COCO keypoint annotation file, checked to have ``images`` and ``annotations``."""
    data = _read_json(path, "annotation file")
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path} is not a COCO annotation file (no 'images' and 'annotations' lists)")
    return data


def _xywh_to_xyxy(bbox, where: str) -> List[float]:
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
        raise ValueError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if not (w >= 0 and h >= 0):  # also NaN
        raise ValueError(f"{where}: bbox [x, y, w, h] = {list(bbox)} has a negative or NaN width or height")
    return [x, y, x + w, y + h]


def image_entries(images_dir: str, annotations: Optional[dict] = None,
                  detections: Optional[str] = None, min_score: float = 0.0) -> List[ImageEntry]:
    """The images to run, sorted by id, each with its people: the detections' boxes when ``detections`` names a
    results file, else the annotations' ground-truth boxes. Every image of the annotation file is listed (an
    image without people gives no results); without annotations, the images the detections name."""
    names: Dict[int, str] = {}
    if annotations is not None:
        names = {int(im["id"]): im["file_name"] for im in annotations["images"]}
    entries: Dict[int, ImageEntry] = {}

    def entry(image_id: int) -> ImageEntry:
        if image_id not in entries:
            name = names.get(image_id, f"{image_id:012d}.jpg")
            entries[image_id] = ImageEntry(image_id, os.path.join(images_dir, name))
        return entries[image_id]

    for image_id in names:
        entry(image_id)
    if detections is not None:
        data = _read_json(detections, "boxes file")
        if not isinstance(data, list):
            raise ValueError(f"{detections} must be a JSON list of detections {{image_id, category_id, bbox, score}}")
        for i, det in enumerate(data):
            where = f"{detections} entry {i}"
            if not isinstance(det, dict) or "image_id" not in det or "bbox" not in det:
                raise ValueError(f"{where}: a detection needs image_id and bbox, got {det!r}")
            if det.get("category_id", PERSON) != PERSON or float(det.get("score", 1.0)) < min_score:
                continue
            image_id = int(det["image_id"])
            if names and image_id not in names:
                raise ValueError(f"{where}: image_id {image_id} is not in the annotation file")
            e = entry(image_id)
            e.boxes.append(_xywh_to_xyxy(det["bbox"], where))
            e.box_scores.append(float(det.get("score", 1.0)))
    elif annotations is not None:
        for ann in annotations["annotations"]:
            if ann.get("category_id", PERSON) != PERSON or ann.get("iscrowd", 0) or not ann.get("num_keypoints", 0):
                continue
            box = _xywh_to_xyxy(ann["bbox"], f"annotation {ann.get('id')}")
            if box[2] > box[0] and box[3] > box[1]:
                e = entry(int(ann["image_id"]))
                e.boxes.append(box)
                e.box_scores.append(1.0)
    else:
        raise ValueError("give the people to run: a boxes file (--boxes) or an annotation file (--annotations)")
    return [entries[k] for k in sorted(entries)]


def keypoint_results(entry: ImageEntry, keypoints: torch.Tensor, scores: torch.Tensor) -> List[dict]:
    """COCO results for one image's people (keypoints [K, J, 2], scores [K, J])."""
    results = []
    for k in range(keypoints.shape[0]):
        s = scores[k].float()
        confident = s[s > JOINT_SCORE_THRESHOLD]
        joint_score = float(confident.mean()) if confident.numel() else 0.0
        triplets = torch.cat((keypoints[k].float(), s[:, None]), dim=1)
        results.append({"image_id": entry.image_id, "category_id": PERSON,
                        "keypoints": [round(v, 3) for v in triplets.flatten().tolist()],
                        "score": entry.box_scores[k] * joint_score})
    return results
