"""``hrnet-fast eval --task seg``: mIoU, pixel accuracy and per-class IoU of a segmentation model on images with
ground-truth masks.

    hrnet-fast eval --task seg --model seg_hrnetv2_w48 --checkpoint w48.pth --images val/img --masks val/gt
    torchrun --nproc_per_node 4 -m hrnet_fast eval --task seg --model ... --images ... --masks ...

Each image ``IMAGES/<rel>/<stem><image-suffix>.<ext>`` is scored against ``MASKS/<rel>/<stem><mask-suffix>.png``
(for Cityscapes: ``--image-suffix _leftImg8bit --mask-suffix _gtFine_labelTrainIds``), a PNG of class ids in
which ``--ignore-index`` (255) marks pixels not scored. The figures come from one confusion matrix (ground truth
x prediction, over the scored pixels), as mmsegmentation's ``IoUMetric`` computes them:

    IoU_c    = tp_c / (gt_c + pred_c - tp_c)   (undefined where class c is in neither: left out of the mean)
    Acc_c    = tp_c / gt_c                     (undefined where class c is not in the ground truth)
    mIoU, mAcc: the means of the defined values; aAcc (pixel accuracy): sum of tp_c / scored pixels

Under torchrun each rank takes the images r, r+N, ... and the matrices are summed (all-reduce), so any number of
processes gives exactly one process's figures. Every pair is checked (mask present, same size as its image)
before the first forward, on every rank, so a bad pair is an error and never a hang.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List, Sequence, Tuple

import torch

from ..evaluate.errors import UserError

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")


def add_arguments(group) -> None:
    from .command import add_pipeline_arguments

    group.add_argument("--masks", help="seg: folder of ground-truth PNG masks of class ids, laid out as --images")
    group.add_argument("--ignore-index", type=int, default=255, help="seg: mask value not scored (default 255)")
    group.add_argument("--image-suffix", default="", help="seg: end of an image's stem not in its mask's name")
    group.add_argument("--mask-suffix", default="", help="seg: end of a mask's stem, e.g. _gtFine_labelTrainIds")
    add_pipeline_arguments(group)


# ---------------------------------------------------------------------------------------------------- metrics
def confusion_matrix(labels: torch.Tensor, truth: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """int64 [K, K]: entry (t, p) counts the pixels of ground truth t predicted as p, pixels marked
    ``ignore_index`` left out. ValueError for a ground-truth value that is neither a class nor ignored."""
    truth = truth.to(labels.device).long().flatten()
    pred = labels.long().flatten()
    keep = truth != ignore_index
    truth, pred = truth[keep], pred[keep]
    bad = (truth < 0) | (truth >= num_classes)
    if bool(bad.any()):
        value = int(truth[bad][0])
        raise ValueError(f"mask value {value} is neither a class (0..{num_classes - 1}) nor the ignore index "
                         f"{ignore_index} (--ignore-index)")
    return torch.bincount(truth * num_classes + pred, minlength=num_classes * num_classes).view(
        num_classes, num_classes)


def metrics(confusion: torch.Tensor) -> Dict:
    """mIoU, mAcc, aAcc and per-class IoU / Acc (as fractions; None where undefined) of a confusion matrix."""
    cm = confusion.double().cpu()
    tp, gt, pred = cm.diag(), cm.sum(1), cm.sum(0)
    union = gt + pred - tp
    iou = [float(t / u) if u > 0 else None for t, u in zip(tp, union)]
    acc = [float(t / g) if g > 0 else None for t, g in zip(tp, gt)]
    total = float(cm.sum())

    def mean(values: Sequence) -> float:
        defined = [v for v in values if v is not None]
        return sum(defined) / len(defined) if defined else math.nan

    return {"mIoU": mean(iou), "mAcc": mean(acc), "aAcc": float(tp.sum()) / total if total else math.nan,
            "IoU": iou, "Acc": acc, "pixels": int(total)}


def format_table(result: Dict, class_names: Sequence[str]) -> str:
    def pct(v) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"

    lines = ["| class | IoU (%) | Acc (%) |", "|:--|--:|--:|"]
    lines += [f"| {name} | {pct(i)} | {pct(a)} |" for name, i, a in zip(class_names, result["IoU"], result["Acc"])]
    lines += ["", f"mIoU {pct(result['mIoU'])} %, mAcc {pct(result['mAcc'])} %, pixel accuracy (aAcc) "
                  f"{pct(result['aAcc'])} % over {result['pixels']} scored pixels"]
    return "\n".join(lines)


def class_names(num_classes: int) -> List[str]:
    return list(CITYSCAPES_CLASSES) if num_classes == len(CITYSCAPES_CLASSES) else [str(i) for i in
                                                                                     range(num_classes)]


# ---------------------------------------------------------------------------------------------------- pairs
def find_pairs(images: str, masks: str, image_suffix: str, mask_suffix: str) -> List[Tuple[str, str]]:
    """(image path, mask path) for every image under ``images``; UserError naming missing masks and pairs whose
    sizes differ (read from the files' headers)."""
    from PIL import Image

    from .command import find_images

    if not os.path.isdir(masks):
        raise UserError(f"mask folder not found: {masks}")
    pairs, missing = [], []
    for rel in find_images(images):
        stem = os.path.splitext(rel)[0]
        if image_suffix and stem.endswith(image_suffix):
            stem = stem[:-len(image_suffix)]
        mask = os.path.join(masks, stem + mask_suffix + ".png")
        (pairs if os.path.isfile(mask) else missing).append((os.path.join(images, rel), mask))
    if missing:
        raise UserError(f"{len(missing)} image(s) have no mask, e.g. {missing[0][0]} (looked for {missing[0][1]}; "
                        f"--image-suffix / --mask-suffix map image names to mask names)")
    for image, mask in pairs:
        with Image.open(image) as a, Image.open(mask) as b:
            if a.size != b.size:
                raise UserError(f"mask {mask} is {b.size[1]}x{b.size[0]} but its image {image} is "
                                f"{a.size[1]}x{a.size[0]}: masks must be the size of their images")
    return pairs


# ---------------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> Dict:
    """The evaluation ``args`` describe; returns the report (printed and written by rank 0 only)."""
    import torch.distributed as dist
    from tqdm import tqdm

    from ..evaluate.options import resolve_device
    from ..evaluate.sharding import StridedShardSampler, init_distributed
    from .command import build_segmenter, read_rgb
    from .masks import read_mask

    if args.images is None or args.masks is None:
        raise UserError("--task seg needs --images (the images) and --masks (their ground-truth class-id PNGs)")
    if args.ignore_index < 0:
        raise UserError(f"--ignore-index must be non-negative; got {args.ignore_index}")
    if args.num_classes is not None and args.num_classes <= 0:
        raise UserError(f"--num-classes must be positive; got {args.num_classes}")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise UserError(f"--json {args.json}: its folder does not exist")
    pairs = find_pairs(args.images, args.masks, args.image_suffix, args.mask_suffix)
    shard, device = init_distributed(resolve_device(args.device))
    torch.backends.cudnn.allow_tf32 = False  # "fp32" in the report means fp32
    torch.backends.cuda.matmul.allow_tf32 = False
    seg = build_segmenter(args, device)
    k = seg.num_classes
    confusion = torch.zeros(k, k, dtype=torch.int64, device=device)
    mine = list(StridedShardSampler(len(pairs), shard))
    bar = tqdm(mine, unit="img", file=sys.stderr, dynamic_ncols=True,
               disable=not shard.is_main or args.no_progress or not sys.stderr.isatty())
    start = time.perf_counter()
    for i in bar:
        image, mask = pairs[i]
        try:
            labels = seg(read_rgb(image))
        except ValueError as e:
            raise UserError(f"{image}: {e}") from None
        try:
            confusion += confusion_matrix(labels, torch.from_numpy(read_mask(mask)), k, args.ignore_index)
        except ValueError as e:
            raise UserError(f"{mask}: {e}") from None
    bar.close()
    wall_s = time.perf_counter() - start
    if shard.distributed:
        dist.all_reduce(confusion, op=dist.ReduceOp.SUM)
    result = metrics(confusion)
    report = {"task": "seg", "model": args.model, "checkpoint": args.checkpoint, "images": len(pairs),
              "pipeline": "reference" if args.reference else "fused", "mode": args.mode, "flip": args.flip,
              "dtype": args.dtype, "ignore_index": args.ignore_index, "world_size": shard.world_size,
              "device": str(device), "wall_s_rank0": wall_s, **result, "classes": class_names(k),
              "confusion": confusion.cpu().tolist()}
    if shard.is_main:
        print(format_table(result, report["classes"]))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
    return report
