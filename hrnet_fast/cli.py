"""The ``hrnet-fast`` command line (also ``python -m hrnet_fast``).

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``; modules are
imported only when their command runs, so ``hrnet-fast --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

COMMANDS = {
    "bench": ("hrnet_fast.bench", "latency table (the seed's layout): reference vs convert() vs peers"),
    "profile": ("hrnet_fast.profile", "params, MACs and FLOPs of every variant beside the seed tables"),
    "eval": ("hrnet_fast.evaluate", "top-1/top-5 on an image folder, COCO keypoint AP (--task pose) or mIoU "
                                    "(--task seg), reference vs converted"),
    "pose": ("hrnet_fast.pose.command", "COCO keypoint results for the person boxes in a folder of images"),
    "seg": ("hrnet_fast.segment.command", "PNG class maps of a folder of images (segmentation models)"),
    "info": ("hrnet_fast.info", "which backends are live on this machine, and why the others are not"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("hrnet_fast")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from . import __version__
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrnet-fast",
        description="Fast HRNet inference: fused kernels, convert(), and the tools to check speed and accuracy.")
    parser.add_argument("--version", action="version", version=f"hrnet-fast {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # argparse's convention for a missing argument: usage and the error on stderr
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: a command is required: {', '.join(COMMANDS)} (--help says what each does)",
              file=sys.stderr)
        return 2
    return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
