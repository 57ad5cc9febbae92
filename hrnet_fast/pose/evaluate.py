"""``hrnet-fast eval --task pose``: COCO keypoint AP/AR of the fused pipeline beside the reference one, scored by
pycocotools' ``COCOeval`` (iouType "keypoints", the field's evaluator) on ground-truth or given boxes.

    hrnet-fast eval --task pose --model pose_hrnet_w32 --checkpoint w32.pth --images val2017 \\
        --annotations person_keypoints_val2017.json [--boxes detections.json] [--json report.json]
    torchrun --nproc_per_node 8 -m hrnet_fast eval --task pose ...

Under torchrun each rank runs the images r, r+N, r+2N, ... (sorted by id), the results are gathered on rank 0 and
evaluated once there, so any number of processes gives the figures of one.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from ..evaluate.errors import UserError
from ..evaluate.options import resolve_device
from ..evaluate.sharding import Shard, StridedShardSampler, init_distributed
from .command import add_pose_options, build_pipeline, check_pose_arguments, load_entries, predict

# COCOeval's keypoint summary, in its order.
STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def coco_keypoint_scores(annotations: str, results: List[dict]) -> Dict[str, float]:
    """COCOeval (keypoints) of ``results`` against the annotation file: the ten summary figures in 0..1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name in STATS}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO(annotations)
        evaluation = COCOeval(truth, truth.loadRes(results), "keypoints")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # COCOeval reports -1 where a figure has nothing to average (no ground truth in an area range).
    return {name: float(v) for name, v in zip(STATS, evaluation.stats)}


def _gather(results: List[dict], shard: Shard) -> Optional[List[dict]]:
    """Every rank's results on rank 0 (None elsewhere)."""
    if not shard.distributed:
        return results
    parts: List[Optional[List[dict]]] = [None] * shard.world_size if shard.is_main else None
    dist.gather_object(results, parts, dst=0)
    return [r for part in parts for r in part] if shard.is_main else None


def add_arguments(group) -> None:
    """``eval``'s options for ``--task pose`` (``--images`` is eval's own)."""
    add_pose_options(group, images=False)


def run(args: argparse.Namespace) -> Optional[Dict]:
    """The pose evaluation ``args`` describe; the report on rank 0 (None on the other ranks)."""
    from ..evaluate.command import progress_enabled
    from ..registry import resolve_name

    check_pose_arguments(args)
    if not args.annotations:
        raise UserError("--task pose needs --annotations (the ground truth to score against)")
    if args.no_reference and args.no_converted:
        raise UserError("--no-reference and --no-converted together leave nothing to evaluate")
    device = resolve_device(args.device)
    shard, device = init_distributed(device)
    torch.backends.cudnn.allow_tf32 = False  # "fp32" in the report means fp32
    torch.backends.cuda.matmul.allow_tf32 = False
    entries = load_entries(args)
    indices = list(StridedShardSampler(len(entries), shard))
    pipelines = ([("reference", False)] if not args.no_reference else []) + \
                ([("fused", True)] if not args.no_converted else [])
    report: Dict = {"model": resolve_name(args.model), "checkpoint": args.checkpoint, "images": len(entries),
                    "annotations": args.annotations, "boxes": args.boxes or "ground truth",
                    "input_size": args.input_size, "decode": args.decode, "flip_test": not args.no_flip,
                    "shift_heatmap": args.shift_heatmap, "dtype": args.dtype, "world_size": shard.world_size,
                    "device": str(device), "results": {}}
    for name, fused in pipelines:
        pose = build_pipeline(args, device, fused)
        prediction = predict(pose, entries, indices, args.batch_size, args.workers,
                             progress_enabled(shard, args.no_progress))
        results = _gather(prediction.results, shard)
        if shard.is_main:
            report["results"][name] = {"people": len(results), "seconds": prediction.seconds,
                                       **coco_keypoint_scores(args.annotations, results)}
    if not shard.is_main:
        return None
    print(format_report(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return report


def format_report(report: Dict) -> str:
    """Markdown: one row per pipeline, COCOeval's figures in percent."""
    lines = [f"{report['model']} on {report['images']} images, {report['boxes']} boxes ({report['input_size']}, "
             f"{report['decode']}, flip test {'on' if report['flip_test'] else 'off'}, {report['world_size']} "
             f"process{'es' if report['world_size'] > 1 else ''} on {report['device']})", "",
             "| pipeline | people | " + " | ".join(STATS) + " |", "| --- | ---: |" + " ---: |" * len(STATS)]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['people']} | " + " | ".join(f"{100 * r[s]:.1f}" for s in STATS) + " |")
    return "\n".join(lines)
