"""A validated benchmark run: device-dependent defaults filled in, impossible combinations refused before any
work (``BenchError`` says what is wrong)."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from .options import DEFAULT_MIN_TIME_S
from .peers import DTYPES, PEERS, SPECS, BenchError, peer_implementations

GPU_DEFAULTS = {"batches": [1, 4, 8, 32], "dtypes": ["fp32", "fp16"]}
CPU_DEFAULTS = {"batches": [1, 4], "dtypes": ["fp32", "bf16"]}  # bf16 only where cpu_supports() it


@dataclass
class Settings:
    """A validated benchmark run."""

    models: List[str]
    batches: List[int]
    dtypes: List[str]
    device: torch.device
    input_size: Tuple[int, int]
    peers: List[str]
    cuda_graph: Optional[bool] = None  # convert()'s cuda_graph: None = its default (graphs on CUDA)
    threads: Optional[int] = None
    warmup: int = 3
    reps: Optional[int] = None
    min_time: float = DEFAULT_MIN_TIME_S

    @property
    def implementations(self) -> List[str]:
        return ["reference", "converted"] + [impl for peer in self.peers for impl in peer_implementations(peer)]

    def runs(self, impl: str, dtype: str) -> bool:
        """Whether ``impl`` has a cell at ``dtype`` on this device (ONNX Runtime and OpenVINO run fp32 only)."""
        return SPECS[impl].runs(self.device.type, dtype)


def cpu_supports(dtype: str) -> bool:
    """Whether oneDNN has a native ``dtype`` path on this CPU (without one, eager fp16/bf16 convolutions take a
    slow emulated path and the figures would mean nothing)."""
    from ..cpu_features import native_dtypes
    return bool(native_dtypes()[str(DTYPES[dtype]).replace("torch.", "")])


def _dtype_supported(dtype: str, device: torch.device) -> Tuple[bool, str]:
    if device.type == "cuda":
        if dtype == "bf16" and not torch.cuda.is_bf16_supported():
            return False, f"{torch.cuda.get_device_name(device)} has no bf16 support"
        return True, ""
    if not cpu_supports(dtype):
        return False, (f"this CPU has no native {dtype} support in oneDNN (eager {dtype} would take a slow "
                       f"emulated path)")
    return True, ""


def _device(text: Optional[str]) -> torch.device:
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text.strip()):
        raise BenchError(f"--device must be cpu or cuda[:N], got {text!r}")
    device = torch.device(text.strip())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for, but torch sees no CUDA device on this machine")
    return device


def _peer_runs(peer: str, device: torch.device, dtypes: List[str]) -> bool:
    return any(SPECS[impl].runs(device.type, d) for impl in peer_implementations(peer) for d in dtypes)


def _check_peer(peer: str, device: torch.device, dtypes: List[str]) -> None:
    for impl in peer_implementations(peer):
        spec = SPECS[impl]
        if spec.devices is not None and device.type not in spec.devices:
            where = " or ".join("the CPU" if d == "cpu" else "CUDA" for d in spec.devices)
            raise BenchError(f"the {peer} peer runs on {where} only; use --device {spec.devices[0]} or leave it "
                             f"out of --peers")
        if spec.dtypes is not None and not set(spec.dtypes) & set(dtypes):
            raise BenchError(f"the {peer} peer runs in {'/'.join(spec.dtypes)} only; add {spec.dtypes[0]} to "
                             f"--dtype or leave it out of --peers")


def _check_input_size(models: List[str], size: Tuple[int, int]) -> None:
    """Models whose fusion upsamples by nearest neighbour (classification, pose) take only sizes whose branches
    halve exactly; segmentation models (bilinear) take any size of at least one pixel."""
    from ..models import check_input_size
    from ..registry import task_of
    if min(size) < 1:
        raise BenchError(f"--input-size must be at least 1x1, got {size[0]}x{size[1]}")
    try:
        for name in models:
            if task_of(name) != "segmentation":
                check_input_size(*size)
    except ValueError as e:
        raise BenchError(str(e)) from None


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Fills device-dependent defaults and checks the combination; BenchError says what is wrong."""
    device = _device(args.device)
    if args.dtype:
        dtypes = list(args.dtype)
    elif device.type == "cuda":
        dtypes = list(GPU_DEFAULTS["dtypes"])
    else:
        dtypes = [d for d in CPU_DEFAULTS["dtypes"] if cpu_supports(d)]
    peers = list(args.peers)
    if peers == ["all"]:
        peers = [p for p in PEERS if _peer_runs(p, device, dtypes)]
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    settings = Settings(models=list(args.models), batches=list(args.batch or defaults["batches"]),
                        dtypes=dtypes, device=device,
                        input_size=tuple(args.input_size), peers=peers, cuda_graph=args.cuda_graph,
                        threads=args.threads, warmup=args.warmup, reps=args.reps, min_time=args.min_time)
    _check_input_size(settings.models, settings.input_size)
    for dtype in settings.dtypes:
        ok, why = _dtype_supported(dtype, device)
        if not ok:
            raise BenchError(f"--dtype {dtype} cannot run on {device}: {why}")
    if settings.cuda_graph and device.type != "cuda":
        raise BenchError("--cuda-graph needs a CUDA device; this run is on the CPU")
    for peer in settings.peers:
        _check_peer(peer, device, settings.dtypes)
    if settings.threads is not None and settings.threads < 1:
        raise BenchError(f"--threads must be >= 1, got {settings.threads}")
    if settings.warmup < 0:
        raise BenchError(f"--warmup must be >= 0, got {settings.warmup}")
    if settings.reps is not None and settings.reps < 1:
        raise BenchError(f"--reps must be >= 1, got {settings.reps}")
    if settings.min_time < 0:
        raise BenchError(f"--min-time must be >= 0 seconds, got {settings.min_time}")
    return settings
