"""The command's options: parsers that turn each option's text into checked values (ValueError naming what is
wrong), and ``add_arguments`` for the ``hrnet-fast bench`` subparser."""
from __future__ import annotations

import argparse
import re
from typing import Any, Callable, List, Tuple

from .peers import DTYPES, PEERS

DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
DEFAULT_MIN_TIME_S = 5.0
DEFAULT_INPUT_SIZE = (224, 224)


def parse_models(text: str) -> List[str]:
    """``w18,w32`` / ``hrnet_w18,HRNet_W32_C`` / ``all`` -> canonical names (ValueError naming a bad one)."""
    from ..registry import list_models, resolve_name
    if text.strip().lower() == "all":
        return list_models()
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError("no model given; e.g. --models w18,w32 or --models all")
    out = [resolve_name(name) for name in names]  # ValueError naming a bad one and the valid names
    return list(dict.fromkeys(out))


def parse_batches(text: str) -> List[int]:
    """``1,4,8,32`` -> [1, 4, 8, 32]; each must be a positive integer."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(re.fullmatch(r"\d+", t) and int(t) > 0 for t in items):
        raise ValueError(f"bad batch list {text!r}: give positive integers separated by commas, e.g. 1,4,8,32")
    return list(dict.fromkeys(int(t) for t in items))


def parse_dtypes(text: str) -> List[str]:
    """``fp32,fp16`` -> ['fp32', 'fp16'] (float32/float16/half/bfloat16 accepted too)."""
    out = []
    for t in (t.strip().lower() for t in text.split(",")):
        name = DTYPE_ALIASES.get(t, t)
        if name not in DTYPES:
            raise ValueError(f"unknown precision {t!r}: choose from {', '.join(DTYPES)}")
        out.append(name)
    return list(dict.fromkeys(out))


def parse_peers(text: str) -> List[str]:
    """``channels_last,compile,onnxruntime,openvino`` / ``none`` -> the list of peers; ``all`` -> ``["all"]``,
    which ``resolve_settings`` expands to the peers that run on the chosen device and precisions."""
    key = text.strip().lower()
    if key == "all":
        return ["all"]
    if key in ("", "none"):
        return []
    peers = [t.strip() for t in key.split(",") if t.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise ValueError(f"unknown peer {bad[0]!r}: choose from {', '.join(PEERS)}, all or none")
    return list(dict.fromkeys(peers))


def parse_input_size(text: str) -> Tuple[int, int]:
    """``224`` -> (224, 224); ``256x192`` or ``256,192`` -> (256, 192) (height, width). Whether the models take
    that size is checked per model (``resolve_settings``): segmentation models take any size."""
    parts = re.split(r"[x,]", text.strip().lower())
    if not 1 <= len(parts) <= 2 or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise ValueError(f"bad input size {text!r}: give HxW or one side, e.g. 224 or 256x192")
    return int(parts[0]), int(parts[-1])


def _argtype(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wraps a parser so argparse reports its ValueError as a usage error (exit status 2)."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__.replace("parse_", "")
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=_argtype(parse_models), default=["hrnet_w18"],
                        help="comma-separated models (w18, hrnet_w32, HRNet_W48_C ...) or 'all' (default: w18)")
    parser.add_argument("--batch", type=_argtype(parse_batches), default=None,
                        help="comma-separated batch sizes (default: 1,4,8,32 on GPU; 1,4 on CPU)")
    parser.add_argument("--dtype", type=_argtype(parse_dtypes), default=None,
                        help="comma-separated precisions from fp32, fp16, bf16 (default: fp32,fp16 on GPU; on CPU "
                             "fp32, and bf16 where oneDNN has a bf16 path on this CPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present, else cpu)")
    parser.add_argument("--input-size", type=_argtype(parse_input_size), default=DEFAULT_INPUT_SIZE,
                        help="HxW or one side (default: 224)")
    parser.add_argument("--peers", type=_argtype(parse_peers), default=[],
                        help="what users pick instead, timed beside: channels_last, compile (torch.compile with "
                             "freezing; slow to compile), onnxruntime (CPU, fp32), openvino (CPU: fp32 and "
                             "OpenVINO's default precision), 'all' (those that run on the device) or 'none' "
                             "(default: none)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch, ONNX Runtime and OpenVINO (default: torch's, one per core); on "
                             "a busy machine 1 avoids threads waiting on each other at every op")
    graphs = parser.add_mutually_exclusive_group()
    graphs.add_argument("--cuda-graph", dest="cuda_graph", action="store_const", const=True, default=None,
                        help="convert with cuda_graph=True (GPU only; the default on a GPU already replays graphs)")
    graphs.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_const", const=False,
                        help="convert with cuda_graph=False: time the converted model launching kernel by kernel")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per implementation and cell (default: 3)")
    parser.add_argument("--reps", type=int, default=None,
                        help="exact timed calls per implementation and cell (default: as many as --min-time takes)")
    parser.add_argument("--min-time", type=float, default=DEFAULT_MIN_TIME_S,
                        help=f"seconds of timed calls per implementation and cell, at least 5 calls "
                             f"(default: {DEFAULT_MIN_TIME_S:g})")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write every figure, with the environment, as JSON")
    parser.add_argument("--plot", metavar="PATH", default=None, help="write a PNG of the speed-ups (matplotlib)")
