"""What a result needs to be read and reproduced: device, library versions, CPU facts, the command line."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import sys
import warnings
from typing import Any, Dict, Optional, Sequence

import torch

from .settings import Settings

# Peers whose runtime's version the environment records when they run.
PEER_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def environment(dev: torch.device, peers: Sequence[str] = ()) -> Dict[str, Any]:
    """Device, library versions and CPU facts a result on ``dev`` needs to be read and reproduced."""
    from .. import __version__
    from ..cpu_features import native_dtypes
    from ..ops import backend_info
    from ..ops.backends import OPS, select
    live = {name: {op: entry["ops"][op].get(dev.type, {}).get("live", False) for op in entry["ops"]}
            for name, entry in backend_info().items()}
    with warnings.catch_warnings():  # a fallback's warning was already shown when the model was converted
        warnings.simplefilter("ignore")
        selected = {op: select(op, dev, None) for op in OPS}
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
        "triton": _version("triton"),
        **{package: _version(package) if peer in peers else None for peer, package in PEER_PACKAGES.items()},
        "hrnet_fast": __version__,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_native_dtypes": native_dtypes(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # A busy machine slows every implementation; the interleaving keeps ratios fair, not absolute times.
        "load_average_1m_before": load_average(),
        "backends_live": live,
        "backends_selected": selected,  # what convert() runs each fused op with on this device
    }


def command_line() -> str:
    """How this process was started, as a shell command."""
    argv = list(sys.argv)
    prog = os.path.basename(argv[0]) if argv else "hrnet-fast"
    if prog == "__main__.py":
        prog = "python -m hrnet_fast"
    return " ".join([prog] + [shlex.quote(a) for a in argv[1:]])


def equivalent_command(settings: Settings) -> str:
    """An ``hrnet-fast bench`` command line that repeats these settings exactly."""
    parts = ["hrnet-fast", "bench", "--models", ",".join(settings.models),
             "--batch", ",".join(map(str, settings.batches)), "--dtype", ",".join(settings.dtypes),
             "--device", str(settings.device), "--input-size", "x".join(map(str, settings.input_size)),
             "--warmup", str(settings.warmup)]
    if settings.peers:
        parts += ["--peers", ",".join(settings.peers)]
    if settings.cuda_graph is not None:
        parts.append("--cuda-graph" if settings.cuda_graph else "--no-cuda-graph")
    if settings.threads is not None:
        parts += ["--threads", str(settings.threads)]
    parts += ["--reps", str(settings.reps)] if settings.reps is not None else ["--min-time", f"{settings.min_time:g}"]
    return " ".join(parts)
