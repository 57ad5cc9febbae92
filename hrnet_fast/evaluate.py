"""``hrnet-fast eval``: top-1/top-5 on a folder of validation images, the reference model beside ``convert()``.

    hrnet-fast eval --model hrnet_w18 --checkpoint w18.pth --data /data/imagenet/val
    hrnet-fast eval --model hrnet_w18_ssld --checkpoint ssld.pdparams --data val --resize 288 --crop 288 --dtype fp16
    torchrun --nproc_per_node 8 -m hrnet_fast eval --model hrnet_w48 --checkpoint w48.pth --data val --json w48.json

One pass over the images feeds both models, so the top-1 agreement compares their predictions image by image.
Under torchrun each rank evaluates the images r, r+N, r+2N, ... (no padding duplicates) and the counts are
summed, so any number of processes gives exactly the figures of one.

Unreadable images (corrupt, truncated, not an image) are skipped, counted and listed in the report and the JSON;
the accuracies are over the images that were read (none read at all is an error). Everything the user can get
wrong (paths, sizes, model name, a checkpoint for another variant) is an error message without a traceback and
exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, TextIO

import torch
import torch.distributed as dist
import torch.nn as nn

from .imagefolder import EvalImageDataset, Sample, check_sizes, find_image_folder, normalize, read_labels_file
from .ops.backends import BACKENDS, OPS, availability, select

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOP5 = 5


class UserError(Exception):
    """A problem with the command's input (paths, sizes, names, checkpoint): printed as a message, no traceback."""


# ---------------------------------------------------------------------------------------------- distribution
@dataclass(frozen=True)
class Shard:
    """This process's place in a torchrun launch (rank 0 of 1 when not launched by torchrun)."""
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class StridedShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + N, rank + 2N, ... of a dataset of ``size``: the ranks' shards partition the dataset
    exactly, with no padding duplicates (unlike DistributedSampler), so summed counts equal one process's."""

    def __init__(self, size: int, shard: Shard):
        self.indices = range(shard.rank, size, shard.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def init_distributed(device: torch.device) -> tuple[Shard, torch.device]:
    """Joins the torchrun process group when WORLD_SIZE > 1 (NCCL for CUDA, gloo for CPU); each rank takes the
    GPU of its LOCAL_RANK. Returns this process's shard and the device it runs on."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Shard(), device
    if not dist.is_available():
        raise UserError("launched with WORLD_SIZE > 1, but this torch build has no torch.distributed")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Shard(dist.get_rank(), dist.get_world_size()), device


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass
class Candidate:
    """A model under evaluation, the dtype its input is cast to (``DTYPES`` key; logits are compared in
    float32), and the backend it runs on, for the report."""
    name: str
    module: nn.Module
    dtype: str
    backend: str


@dataclass
class ModelScore:
    """Counts for one model over the evaluated images (summed over ranks once reduced)."""
    correct_top1: int = 0
    correct_top5: int = 0  # among the min(5, num_classes) best classes
    forward_s: float = 0.0  # time in forward, synchronised; the slowest rank's once reduced


@dataclass
class EvalResult:
    """Everything one evaluation measured."""
    images: int = 0                      # images read and scored
    skipped: List[int] = field(default_factory=list)  # sample indices of unreadable images
    scores: Dict[str, ModelScore] = field(default_factory=dict)
    same_top1: int = 0                   # images whose top-1 is the same for the first two candidates
    wall_s: float = 0.0                  # loop time without the warm-up forwards; slowest rank once reduced
    top5_k: int = TOP5                   # the "top-5" k: 5, or the class count when the model has fewer


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(candidates: Sequence[Candidate], loader: torch.utils.data.DataLoader, device: torch.device,
             num_classes: int, progress: bool = False) -> EvalResult:
    """Scores every candidate on every image the loader yields (this process's shard).

    The loader yields (uint8 images (B, 3, H, W), labels (B,), sample indices (B,), decoded ok (B,)). Images
    that did not decode are left out and their indices recorded. Each candidate gets one untimed warm-up
    forward on the first batch (kernel compilation, autotuning, graph capture) so images/s is steady-state.
    """
    from tqdm import tqdm

    k = min(TOP5, num_classes)
    result = EvalResult(scores={c.name: ModelScore() for c in candidates}, top5_k=k)
    bar = tqdm(total=len(loader.sampler), unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    warm_up_s, warmed = 0.0, False
    start = time.perf_counter()
    for images, labels, indices, ok in loader:
        bar.update(len(indices))
        result.skipped.extend(indices[~ok].tolist())
        if not bool(ok.any()):
            continue
        if not bool(ok.all()):  # indexing copies, and the copy is not in pinned memory: only when needed
            images, labels = images[ok], labels[ok]
        x = normalize(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        if not warmed:
            warm_start = time.perf_counter()
            for c in candidates:
                c.module(x.to(DTYPES[c.dtype]))
            _synchronize(device)
            warm_up_s, warmed = time.perf_counter() - warm_start, True
        top1s = []
        for c in candidates:
            t0 = time.perf_counter()
            logits = c.module(x.to(DTYPES[c.dtype])).float()
            _synchronize(device)
            score = result.scores[c.name]
            score.forward_s += time.perf_counter() - t0
            top = logits.topk(k, dim=1).indices                     # (B, k), best first
            score.correct_top1 += int((top[:, 0] == labels).sum())
            score.correct_top5 += int((top == labels[:, None]).any(dim=1).sum())
            top1s.append(top[:, 0])
        if len(top1s) == 2:
            result.same_top1 += int((top1s[0] == top1s[1]).sum())
        result.images += int(labels.numel())
    result.wall_s = time.perf_counter() - start - warm_up_s
    bar.close()
    return result


def reduce_result(result: EvalResult, shard: Shard, device: torch.device) -> EvalResult:
    """Sums the counts over the ranks, takes the slowest rank's times, and gathers the skipped indices, so every
    rank ends with the figures of the whole dataset."""
    if not shard.distributed:
        return result
    # NCCL reduces CUDA tensors only; gloo reduces CPU ones.
    names = list(result.scores)
    counts = torch.tensor([result.images, result.same_top1]
                          + [n for s in result.scores.values() for n in (s.correct_top1, s.correct_top5)],
                          dtype=torch.int64, device=device)
    times = torch.tensor([result.wall_s] + [s.forward_s for s in result.scores.values()],
                         dtype=torch.float64, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)
    skipped: List[Optional[List[int]]] = [None] * shard.world_size
    dist.all_gather_object(skipped, result.skipped)
    counts_list, times_list = counts.tolist(), times.tolist()
    scores = {name: ModelScore(counts_list[2 + 2 * i], counts_list[3 + 2 * i], times_list[1 + i])
              for i, name in enumerate(names)}
    return EvalResult(images=counts_list[0], skipped=sorted(i for part in skipped for i in part), scores=scores,
                      same_top1=counts_list[1], wall_s=times_list[0], top5_k=result.top5_k)


# ---------------------------------------------------------------------------------------------- report
def _percent(count: int, total: int) -> float:
    return 100.0 * count / total


def report_dict(result: EvalResult, candidates: Sequence[Candidate], samples: Sequence[Sample],
                settings: Dict) -> Dict:
    """The JSON report: settings, per-model counts and percentages, agreement, throughput, skipped images."""
    models = {}
    for c in candidates:
        s = result.scores[c.name]
        models[c.name] = {
            "dtype": c.dtype, "backend": c.backend,
            "correct_top1": s.correct_top1, "correct_top5": s.correct_top5,
            "top1": _percent(s.correct_top1, result.images), "top5": _percent(s.correct_top5, result.images),
            "forward_s": s.forward_s,
            "forward_images_per_s": result.images / s.forward_s if s.forward_s > 0 else None,
        }
    agreement = None
    if len(candidates) == 2:
        agreement = {"models": [c.name for c in candidates], "same_top1": result.same_top1,
                     "percent": _percent(result.same_top1, result.images)}
    return {
        **settings,
        "images": result.images,
        "skipped": len(result.skipped),
        "skipped_paths": [samples[i][0] for i in result.skipped],
        "top5_k": result.top5_k,
        "results": models,
        "top1_agreement": agreement,
        "wall_s": result.wall_s,
        "images_per_s": result.images / result.wall_s if result.wall_s > 0 else None,
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
    }


def format_report(report: Dict) -> str:
    """Markdown: one row per model (top-1, top-k, forward images/s), then agreement, throughput, skipped."""
    k = report["top5_k"]
    lines = [f"{report['model']} on {report['images']} images ({report['resize']} -> {report['crop']}, "
             f"{report['world_size']} process{'es' if report['world_size'] > 1 else ''} on {report['device']})",
             "",
             f"| model | dtype | backend | top-1 (%) | top-{k} (%) | forward images/s |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for name, r in report["results"].items():
        speed = f"{r['forward_images_per_s']:.1f}" if r["forward_images_per_s"] else "-"
        lines.append(f"| {name} | {r['dtype']} | {r['backend']} | {r['top1']:.3f} | {r['top5']:.3f} | {speed} |")
    lines.append("")
    agreement = report["top1_agreement"]
    if agreement:
        lines.append(f"top-1 agreement, {' vs '.join(agreement['models'])}: {agreement['percent']:.3f} % "
                     f"({agreement['same_top1']} / {report['images']} images)")
    if report["images_per_s"]:
        lines.append(f"end to end (decode + forward): {report['images_per_s']:.1f} images/s")
    if report["skipped"]:
        shown = report["skipped_paths"][:5]
        lines.append(f"skipped {report['skipped']} unreadable image(s), not counted: {', '.join(shown)}"
                     f"{' ...' if report['skipped'] > len(shown) else ''}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- setup
def load_samples(data: str, labels: Optional[str], num_classes: int) -> tuple[List[Sample], Optional[int]]:
    """Samples from ``--labels`` or the ImageFolder tree, checked against the model's class count. Returns the
    samples and the folder's class count (None with a labels file)."""
    try:
        if labels:
            samples, folder_classes = read_labels_file(data, labels), None
        else:
            samples, classes = find_image_folder(data)
            folder_classes = len(classes)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from None
    top_label = max(label for _, label in samples)
    if top_label >= num_classes:
        where = f"{data} has {folder_classes} class folders" if folder_classes else f"{labels} has label {top_label}"
        raise UserError(f"{where}, but the model has {num_classes} classes (--num-classes)")
    return samples, folder_classes


def checkpoint_advice(error: Exception, num_classes: int) -> str:
    """A checkpoint error in this command's terms: the mismatch, one problem a line, and the flag that fixes it
    (``--num-classes``) instead of the Python API's advice."""
    details = getattr(error, "details", None)
    if details is None:
        return str(error)
    classes = getattr(error, "num_classes", None)
    if classes is not None and classes != num_classes:
        details += f"\n  The checkpoint has {classes} classes: pass --num-classes {classes}."
    return details


def build_reference(model_name: str, checkpoint: str, num_classes: int, device: torch.device) -> nn.Module:
    """The reference model with the checkpoint's weights, in eval mode on ``device``."""
    from .checkpoints import CheckpointError, load_checkpoint
    from .registry import create_model, resolve_name

    try:
        model = create_model(model_name, num_classes=num_classes)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not os.path.isfile(checkpoint):
        raise UserError(f"checkpoint not found: {checkpoint}")
    try:
        load_checkpoint(model, checkpoint, strict=True)
    except (CheckpointError, OSError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot load {checkpoint} into {resolve_name(model_name)} (--num-classes {num_classes}): "
                        f"{checkpoint_advice(e, num_classes)}") from None
    return model.eval().to(device)


def describe_backend(backend: Optional[str], device: torch.device) -> str:
    """The backend for the report: the one asked for, or what automatic selection picks per fused op.
    UserError when the one asked for cannot run both fused ops on ``device``."""
    if backend is None:
        return "auto: " + ", ".join(f"{op}={select(op, device, None)}" for op in OPS)
    for op in OPS:
        live, why = availability(backend, op, device.type)
        if not live:
            raise UserError(f"--backend {backend} cannot run {op} on {device}: {why}")
    return backend


def build_converted(reference: nn.Module, dtype: torch.dtype, backend: Optional[str],
                    cuda_graph: bool) -> nn.Module:
    """``hrnet_fast.convert`` of the reference (a new module; the reference is left as it is)."""
    from .convert import convert

    return convert(reference, dtype=dtype, backend=backend, cuda_graph=cuda_graph, inplace=False)


def resolve_device(name: Optional[str]) -> torch.device:
    """``--device``, defaulting to CUDA when there is a GPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available on this machine")
    return device


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before reading images or building models."""
    from .models import check_input_size

    if args.no_reference and args.no_converted:
        raise UserError("--no-reference and --no-converted together leave nothing to evaluate")
    if args.batch_size <= 0 or args.workers < 0 or args.num_classes <= 0:
        raise UserError("--batch-size and --num-classes must be positive and --workers non-negative")
    try:
        check_sizes(args.resize, args.crop)
        check_input_size(args.crop, args.crop)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise UserError(f"--json {args.json}: its folder does not exist")


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, e.g. hrnet_w18 (aliases accepted)")
    parser.add_argument("--checkpoint", required=True, help="weights: timm/official, mmpretrain or PaddleClas")
    parser.add_argument("--data", required=True,
                        help="validation images: one sub-folder per class (classes sorted by name = label order), "
                             "or the root the --labels paths are relative to")
    parser.add_argument("--labels", help="labels file, one 'relative/path.jpg <int label>' per line")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier size (default 1000)")
    parser.add_argument("--resize", type=int, default=256, help="short side before the crop (default 256)")
    parser.add_argument("--crop", type=int, default=224, help="centre crop (default 224; ssld: 288 with --resize 288)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader worker processes per rank (0: decode in the main process)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available); under torchrun "
                                         "each rank uses cuda:LOCAL_RANK")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="convert() dtype (default fp32)")
    parser.add_argument("--backend", choices=BACKENDS, help="convert() backend (default: the best live one per op)")
    parser.add_argument("--cuda-graph", action="store_true", help="convert(cuda_graph=True): replay CUDA graphs")
    parser.add_argument("--no-reference", action="store_true", help="evaluate only the converted model")
    parser.add_argument("--no-converted", action="store_true", help="evaluate only the reference model")
    parser.add_argument("--json", help="also write the report as JSON to this path")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none when stderr is no TTY)")


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
        converted = build_converted(reference, DTYPES[args.dtype], args.backend, args.cuda_graph)
        candidates.append(Candidate("converted", converted, args.dtype, backend))

    dataset = EvalImageDataset(samples, args.resize, args.crop)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size,
                                         sampler=StridedShardSampler(len(dataset), shard),
                                         num_workers=args.workers, pin_memory=device.type == "cuda")
    progress = progress_enabled(shard, args.no_progress)
    result = reduce_result(evaluate(candidates, loader, device, args.num_classes, progress), shard, device)
    if result.images == 0:
        raise UserError(f"none of the {len(samples)} images could be read (e.g. {samples[0][0]})")

    from .registry import resolve_name
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
        run(args)
        return 0
    except UserError as e:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank meets the same error
            print(f"hrnet-fast eval: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
