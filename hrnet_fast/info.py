"""``hrnet-fast info``: which backends are live on this machine and why the others are not."""
from __future__ import annotations

import argparse
import json

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print backend_info(), cpu_features.native_dtypes() and the extension report as JSON")


def extension_summary() -> str:
    """Whether the compiled extension is loaded, whether (and for which GPUs) it holds CUDA kernels, and whether
    its CPU convolution keeps oneDNN primitives (``hrnet_fast/ops/onednn_conv.py``) and replays stages
    (``hrnet_fast/convert/replay.py``)."""
    from .convert import replay
    from .ops import extension, onednn_conv
    mod = extension.module()
    if mod is None:
        return f"not loaded ({extension.loaded()[1]})"
    archs = extension.fatbin_archs(mod.__file__)
    cuda = (f"CUDA kernels compiled for {', '.join(archs)}" if archs else
            "CPU kernels only (built without the CUDA kernels)")
    own, why = onednn_conv.available()
    if not own:
        return f"{mod.__file__}: {cuda}; CPU convolution through ATen's oneDNN op ({why})"
    calls = ("stages and branches replayed in one call each" if replay.enabled() else
             "each conv called from Python (HRNET_FAST_NO_REPLAY=1)")
    schedule = ("HR modules' branches at once where the first replayed call per input shape and thread count "
                f"measures it faster ({torch.get_num_threads()} threads now; convert(parallel_branches=...))"
                if replay.parallel_enabled() else "branches one after another (HRNET_FAST_PARALLEL_BRANCHES=0)")
    if replay.enabled():
        calls += f", {schedule}; on CUDA graphs branches are serial unless parallel_branches=True"
    return f"{mod.__file__}: {cuda}; CPU convolution on {why}, primitives kept per layer, {calls}"


def main(args: argparse.Namespace) -> int:
    from . import cpu_features
    from .ops import backend_info
    info = backend_info()
    if args.json:
        print(json.dumps({**info, "cpu_features": cpu_features.native_dtypes(),
                          "compiled_extension": extension_summary()}, indent=2))
        return 0
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(cpu_features.summary())
    print(f"compiled extension: {extension_summary()}")
    for name, entry in info.items():
        print(f"  {name:7s} {'live' if entry['live'] else 'not live'}"
              f"{'' if entry['live'] else ': ' + str(entry['reason'])}")
    return 0
