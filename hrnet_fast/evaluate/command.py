"""``hrnet-fast eval``'s entry point: the checked options, the shard, the candidates, one pass over the images,
and the report printed and written by rank 0; a user error becomes a message and exit status 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, TextIO

import torch
import torch.distributed as dist

from ..imagefolder import EvalImageDataset
from .candidates import DTYPES, Candidate, build_converted, build_reference, describe_backend
from .errors import UserError
from .options import check_arguments, resolve_device
from .report import format_report, report_dict
from .samples import load_samples
from .scoring import evaluate
from .sharding import Shard, StridedShardSampler, init_distributed, reduce_result


def progress_enabled(shard: Shard, no_progress: bool, stream: TextIO = sys.stderr) -> bool:
    """A progress bar on rank 0 only, unless ``--no-progress`` or ``stream`` is not a terminal (a log file or a
    pipe would fill with carriage-return updates)."""
    return shard.is_main and not no_progress and stream.isatty()


def run(args: argparse.Namespace) -> Dict:
    """The evaluation ``args`` describe; returns the report (printed and written by rank 0 only)."""
    check_arguments(args)
    device = resolve_device(args.device)
    if args.cuda_graph and (args.no_converted or device.type != "cuda"):
        raise UserError("--cuda-graph applies to the converted model on a CUDA device")
    shard, device = init_distributed(device)
    # "fp32" in the report means fp32: no TF32 convolutions or matmuls behind it.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

    samples, folder_classes = load_samples(args.data, args.labels, args.num_classes)
    if shard.is_main and folder_classes is not None and folder_classes != args.num_classes:
        print(f"warning: {args.data} has {folder_classes} class folders and the model {args.num_classes} classes: "
              f"folder i (sorted by name) is scored as class i; use --labels to map images to the model's classes",
              file=sys.stderr)
    reference = build_reference(args.model, args.checkpoint, args.num_classes, device)
    candidates = []
    if not args.no_reference:
        candidates.append(Candidate("reference", reference, "fp32", "eager"))
    if not args.no_converted:
        backend = describe_backend(args.backend, device)
        converted = build_converted(reference, DTYPES[args.dtype], args.backend, args.cuda_graph or None)
        candidates.append(Candidate("converted", converted, args.dtype, backend))

    dataset = EvalImageDataset(samples, args.resize, args.crop)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size,
                                         sampler=StridedShardSampler(len(dataset), shard),
                                         num_workers=args.workers, pin_memory=device.type == "cuda")
    progress = progress_enabled(shard, args.no_progress)
    result = reduce_result(evaluate(candidates, loader, device, args.num_classes, progress), shard, device)
    if result.images == 0:
        raise UserError(f"none of the {len(samples)} images could be read (e.g. {samples[0][0]})")

    from ..registry import resolve_name
    settings = {"model": resolve_name(args.model), "checkpoint": args.checkpoint, "data": args.data,
                "labels": args.labels, "num_classes": args.num_classes, "resize": args.resize, "crop": args.crop,
                "batch_size": args.batch_size, "world_size": shard.world_size, "device": str(device)}
    report = report_dict(result, candidates, samples, settings)
    if shard.is_main:
        print(format_report(report))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
    return report


def main(args: argparse.Namespace) -> int:
    """``hrnet-fast eval``: 0 on success, 2 with a one-line message for a user error."""
    try:
        if args.task == "pose":
            from ..pose.evaluate import run as run_pose
            run_pose(args)
        else:
            run(args)
        return 0
    except UserError as e:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank meets the same error
            print(f"hrnet-fast eval: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
