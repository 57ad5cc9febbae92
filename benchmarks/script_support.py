"""What the measurement scripts in benchmarks/ (cpu_overhead, cpu_forward_routes, cpu_conv_call_cost,
cpu_page_faults) share: the command line their results record, printing the result as JSON and writing it with
``--json PATH`` (``summarize.py`` lists such files by their command), and the converted model the per-forward
scripts measure."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

import hrnet_fast
from hrnet_fast.calibrate import calibrate_bn


# Environment variables that change what a script measures, recorded in front of its command.
_RECORDED_ENV = ("HRNET_FAST_", "ONEDNN_", "ATEN_CPU_CAPABILITY", "MALLOC_")


def command() -> str:
    """The command line as run from the repository root, for the result to record (``[VAR=value ...] python
    benchmarks/<script>.py ...``): the settings that change the measurement included, whatever the working
    directory was."""
    root = Path(__file__).resolve().parent.parent

    def from_root(path: str) -> str:
        full = Path(path).resolve()
        return str(full.relative_to(root)) if full.is_relative_to(root) else str(full)

    args = [from_root(sys.argv[0]), *sys.argv[1:]]
    if "--json" in sys.argv[:-1]:
        i = sys.argv.index("--json")
        args[i + 1] = from_root(sys.argv[i + 1])
    env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(_RECORDED_ENV)]
    return " ".join(env + ["python"] + args)


def emit(result: Dict, path: Optional[str], show: bool = True) -> None:
    """Prints ``result`` as JSON (unless ``show`` is False) and writes it to ``path`` when one is given."""
    text = json.dumps(result, indent=1)
    if show:
        print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options naming what ``converted_model`` builds: model, input size, batch, threads, dtype."""
    p.add_argument("--model", default="hrnet_w18")
    p.add_argument("--input-size", default="224x224", help="HxW")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))


def converted_model(args: argparse.Namespace) -> Tuple[torch.nn.Module, torch.Tensor, Tuple[int, int]]:
    """(the model converted for ``args.dtype``, a seeded input batch, (H, W)), after setting the thread count: BN
    calibrated once at the input size, so activations have realistic scales."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = (int(v) for v in args.input_size.lower().split("x"))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = hrnet_fast.create_model(args.model)
    calibrate_bn(model, (h, w), steps=1, batch=2)
    return hrnet_fast.convert(model.eval(), dtype=dtype), torch.randn(args.batch, 3, h, w).to(dtype), (h, w)
