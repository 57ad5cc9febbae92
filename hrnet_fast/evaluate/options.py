"""``hrnet-fast eval``'s options, and the checks that need neither images nor models (sizes, counts, the device,
the JSON folder), so a mistyped option fails before the slow work starts."""
from __future__ import annotations

import argparse
import os
from typing import Optional

import torch

from ..imagefolder import check_sizes
from ..ops.backends import BACKENDS
from .candidates import DTYPES
from .errors import UserError


# eval --task: the module whose ``run(args)`` evaluates each task and, past classification's (below), whose
# ``add_arguments(group)`` adds the task's own options. Imported when the parser is built or the task runs.
TASKS = {"classification": "hrnet_fast.evaluate.command", "pose": "hrnet_fast.pose.evaluate",
         "seg": "hrnet_fast.segment.evaluate"}
DEFAULT_CLASSES = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    import importlib

    parser.add_argument("--task", choices=list(TASKS), default="classification",
                        help="what to evaluate (default classification: top-1/top-5 on an image folder)")
    parser.add_argument("--model", required=True, help="model name, e.g. hrnet_w18 (aliases accepted)")
    parser.add_argument("--checkpoint", required=True, help="weights: timm/official, mmpretrain or PaddleClas")
    parser.add_argument("--data",
                        help="classification: validation images, one sub-folder per class (classes sorted by name = "
                             "label order), or the root the --labels paths are relative to")
    parser.add_argument("--images", help="pose and seg: the folder of images")
    parser.add_argument("--labels", help="labels file, one 'relative/path.jpg <int label>' per line")
    parser.add_argument("--num-classes", type=int,
                        help=f"classifier size (default {DEFAULT_CLASSES}; other tasks: the model's)")
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
    for task, module in TASKS.items():
        if task != "classification":
            importlib.import_module(module).add_arguments(parser.add_argument_group(f"--task {task}"))


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before reading images or building models."""
    from ..models import check_input_size

    if args.data is None:
        raise UserError("--data is required: the folder of validation images")
    if args.num_classes is None:
        args.num_classes = DEFAULT_CLASSES
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
