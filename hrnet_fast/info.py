"""``hrnet-fast info``: which backends are live on this machine and why the others are not."""
from __future__ import annotations

import argparse
import json

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print backend_info() and cpu_features.native_dtypes() as JSON")


def main(args: argparse.Namespace) -> int:
    from . import cpu_features
    from .ops import backend_info
    info = backend_info()
    if args.json:
        print(json.dumps({**info, "cpu_features": cpu_features.native_dtypes()}, indent=2))
        return 0
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(cpu_features.summary())
    for name, entry in info.items():
        print(f"  {name:7s} {'live' if entry['live'] else 'not live'}"
              f"{'' if entry['live'] else ': ' + str(entry['reason'])}")
    return 0
