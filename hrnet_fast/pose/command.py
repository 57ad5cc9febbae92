"""``hrnet-fast pose``: COCO keypoint results for the people in a folder of images.

    hrnet-fast pose --model pose_hrnet_w32 --checkpoint w32.pth --images val2017 \\
        --boxes COCO_val2017_detections_person.json --annotations person_keypoints_val2017.json --out results.json

People come from a detector's boxes (``--boxes``, COCO results format) or from the annotation file's ground-truth
boxes (``--annotations`` alone); see ``coco.py`` for the conventions. The images are read in DataLoader workers,
``--batch-size`` images (all their people, and their mirror images with the flip test) go through the network as
one batch, and the results are written as COCO keypoint results (``image_id, category_id, keypoints, score``).
``hrnet-fast eval --task pose`` runs the same and scores it with pycocotools.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..evaluate.errors import UserError
from .coco import ImageEntry, image_entries, keypoint_results, read_annotations
from .decode import METHODS
from .pipeline import TopDownPose


def add_pose_options(group, images: bool = True) -> None:
    """The options ``pose`` and ``eval --task pose`` share: the people to run and the pipeline's conventions
    (``images``: with ``--images``, which ``eval`` defines once for every task that reads a folder of images)."""
    if images:
        group.add_argument("--images", help="folder of the images (COCO's val2017)")
    group.add_argument("--annotations", help="COCO keypoint annotations (person_keypoints_*.json): image file "
                                             "names, and the people when no --boxes are given")
    group.add_argument("--boxes", help="person detections, COCO results format ([{image_id, bbox: [x, y, w, h], "
                                       "score}]); default: the annotations' ground-truth boxes")
    group.add_argument("--min-box-score", type=float, default=0.0, help="drop detections scored below this")
    group.add_argument("--input-size", default="256x192", help="network crop HEIGHTxWIDTH (default 256x192)")
    group.add_argument("--decode", choices=METHODS, default="classic", help="heatmap decoding (default classic)")
    group.add_argument("--no-flip", action="store_true", help="no flip test")
    group.add_argument("--shift-heatmap", action="store_true", help="the official one-pixel shift of flipped heatmaps")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..evaluate.candidates import DTYPES

    parser.add_argument("--model", required=True, help="pose model name, e.g. pose_hrnet_w32")
    parser.add_argument("--checkpoint", required=True, help="weights: official or mmpose")
    parser.add_argument("--out", required=True, help="where to write the COCO keypoint results (JSON)")
    add_pose_options(parser.add_argument_group("pose"))
    parser.add_argument("--batch-size", type=int, default=8, help="images per network batch (default 8)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader worker processes decoding images (0: in the main process)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="run dtype (default fp32)")
    parser.add_argument("--reference", action="store_true",
                        help="the plain-PyTorch reference pipeline instead of the fused one")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none when stderr is no TTY)")


def parse_input_size(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--input-size {text!r}: expected HEIGHTxWIDTH, e.g. 256x192") from None
    return h, w


def check_pose_arguments(args: argparse.Namespace) -> None:
    """What can be checked before any file is read."""
    if not args.images or not os.path.isdir(args.images):
        raise UserError(f"--images {args.images}: not a folder" if args.images else "--images is required")
    if not args.boxes and not args.annotations:
        raise UserError("give the people to run: --boxes (detections) or --annotations (ground-truth boxes)")
    for flag, path in (("--boxes", args.boxes), ("--annotations", args.annotations)):
        if path and not os.path.isfile(path):
            raise UserError(f"{flag} {path}: no such file")
    if args.batch_size <= 0 or args.workers < 0:
        raise UserError("--batch-size must be positive and --workers non-negative")
    parse_input_size(args.input_size)


def load_entries(args: argparse.Namespace) -> List[ImageEntry]:
    try:
        annotations = read_annotations(args.annotations) if args.annotations else None
        return image_entries(args.images, annotations, args.boxes, args.min_box_score)
    except ValueError as e:
        raise UserError(str(e)) from None


def build_pipeline(args: argparse.Namespace, device: torch.device, fused: bool) -> TopDownPose:
    """The pipeline for ``--model`` with ``--checkpoint``: converted to ``--dtype`` (fused), or the eager model
    in ``--dtype`` (reference)."""
    from ..convert import convert
    from ..evaluate.candidates import DTYPES, build_reference

    model = build_reference(args.model, args.checkpoint, 17, device)
    dtype = DTYPES[args.dtype]
    try:
        model = convert(model, dtype=dtype, backend=getattr(args, "backend", None)) if fused else model.to(dtype)
        return TopDownPose(model, parse_input_size(args.input_size), flip_test=not args.no_flip,
                           decode=args.decode, shift_heatmap=args.shift_heatmap, fused=fused)
    except (TypeError, ValueError) as e:
        raise UserError(f"--model {args.model}: {e}") from None


class ImageDataset(torch.utils.data.Dataset):
    """(index, uint8 [H, W, 3] RGB tensor or None, why not) of each entry's image. A worker's exception would
    reach the main process wrapped in its traceback, so a missing or unreadable image comes back as its reason and
    the main process raises the UserError."""

    def __init__(self, entries: Sequence[ImageEntry]):
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Tuple[int, Optional[torch.Tensor], str]:
        from PIL import Image

        try:
            with Image.open(self.entries[index].path) as image:
                return index, torch.from_numpy(np.asarray(image.convert("RGB")).copy()), ""
        except (OSError, ValueError) as e:
            return index, None, str(e)


@dataclass
class Prediction:
    results: List[dict]
    images: int
    people: int
    seconds: float


def predict(pose: TopDownPose, entries: Sequence[ImageEntry], indices: Sequence[int], batch_size: int,
            workers: int, progress: bool) -> Prediction:
    """The COCO results of the entries at ``indices`` (this process's shard), ``batch_size`` images a batch."""
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(ImageDataset(entries), batch_size=batch_size, sampler=list(indices),
                                         num_workers=workers, collate_fn=list)
    results: List[dict] = []
    people = 0
    bar = tqdm(total=len(indices), unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    for batch in loader:
        chosen = [entries[i] for i, _, _ in batch]
        for entry, (_, image, why) in zip(chosen, batch):
            if image is None:
                raise UserError(f"cannot read image {entry.image_id} ({entry.path}): {why}")
        boxes = [torch.tensor(e.boxes, dtype=torch.float32).reshape(-1, 4) for e in chosen]
        try:
            keypoints, scores = pose([image for _, image, _ in batch], boxes)
        except (TypeError, ValueError) as e:
            ids = ", ".join(str(e_.image_id) for e_ in chosen)
            raise UserError(f"images {ids}: {e}") from None
        for entry, k, s in zip(chosen, keypoints, scores):
            results.extend(keypoint_results(entry, k.cpu(), s.cpu()))
            people += k.shape[0]
        bar.update(len(batch))
    bar.close()
    return Prediction(results, len(indices), people, time.perf_counter() - start)


def main(args: argparse.Namespace) -> int:
    """``hrnet-fast pose``: 0 on success, 2 with a one-line message for a user error."""
    from ..evaluate.options import resolve_device

    try:
        check_pose_arguments(args)
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
            raise UserError(f"--out {args.out}: its folder does not exist")
        device = resolve_device(args.device)
        entries = load_entries(args)
        pose = build_pipeline(args, device, fused=not args.reference)
        progress = not args.no_progress and sys.stderr.isatty()
        prediction = predict(pose, entries, range(len(entries)), args.batch_size, args.workers, progress)
    except UserError as e:
        print(f"hrnet-fast pose: error: {e}", file=sys.stderr)
        return 2
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(prediction.results, f)
    rate = prediction.images / prediction.seconds if prediction.seconds > 0 else float("nan")
    print(f"{prediction.people} people on {prediction.images} images in {prediction.seconds:.1f} s "
          f"({rate:.1f} images/s, {'reference' if args.reference else 'fused'} pipeline): {args.out}")
    return 0
