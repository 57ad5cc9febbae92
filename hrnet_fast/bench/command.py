"""``hrnet-fast bench``'s entry point: settings, the run, the printed report and the files it writes."""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from .environment import environment, load_average
from .peers import BenchError, convert_fn
from .progress import format_plan, stderr_log
from .report import format_report, to_json
from .runner import run
from .settings import resolve_settings


def main(args: argparse.Namespace) -> int:
    try:
        settings = resolve_settings(args)
        convert_fn()  # fail before any work when convert() is missing
    except BenchError as e:
        print(f"hrnet-fast bench: error: {e}", file=sys.stderr)
        return 2
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    env = environment(settings.device, settings.peers)
    stderr_log(format_plan(settings))
    results = run(settings, stderr_log)
    env["load_average_1m_after"] = load_average()
    print(format_report(results, env))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(to_json(results, env), f, indent=2)
            f.write("\n")
    if args.plot:
        from .plot import plot_speedups
        plot_speedups(results, args.plot)
    return 0
