"""gpu_check stage 'sanitizer': compute-sanitizer memcheck over a small converted forward on the triton and cuda
backends (benchmarks/gpu_check_forward.py). Smoke mode runs the same forward on the CPU, without the sanitizer."""
from __future__ import annotations

import re
import shutil
import sys

from gpu_check_common import SMOKE, remaining, run_command, stage_main


def body(args):
    forward = [sys.executable, "benchmarks/gpu_check_forward.py"]
    sanitizer = shutil.which("compute-sanitizer")
    if SMOKE or sanitizer is None:
        run = run_command(forward + (["--cpu"] if SMOKE else []), remaining(args))
        out = {"sanitizer": None, "forward": run}
        if run.get("rc") != 0 or not SMOKE:  # on a GPU machine without the sanitizer, the check did not happen
            out["status_override"] = "failed"
        return out
    run = run_command([sanitizer, "--tool", "memcheck", "--error-exitcode", "3", "--target-processes", "all"]
                      + forward, remaining(args))
    errors = re.findall(r"ERROR SUMMARY: (\d+) error", run.get("output_tail", ""))
    out = {"sanitizer": sanitizer, "memcheck": run, "errors": int(errors[-1]) if errors else None}
    if run.get("rc") != 0 or not errors or int(errors[-1]):
        out["status_override"] = "failed"
    return out


if __name__ == "__main__":
    sys.exit(stage_main("sanitizer", body))
