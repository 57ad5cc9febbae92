"""gpu_check stage 'sanitizer': compute-sanitizer memcheck over a small converted forward per GPU backend
(benchmarks/gpu_check_forward.py: HRNet-W18-small 64x64, cuda fp16, triton fp16, cuda fp32), with Triton's config
timing off (``HRNET_FAST_TUNING=off``). Records the sanitizer's error count and each forward's relative error,
as far as the budget reached. Smoke mode runs the same forward on the CPU, without the sanitizer."""
from __future__ import annotations

import re
import shutil
import sys

from gpu_check_common import SMOKE, run_command, stage_main

_FORWARD = re.compile(r"^forward (\S+) (\S+): relative error (\S+)", re.M)


def body(stage, args) -> None:
    forward = [sys.executable, "benchmarks/gpu_check_forward.py"]
    env = {"HRNET_FAST_TUNING": "off", "HRNET_FAST_TUNING_CACHE": "off"}
    sanitizer = None if SMOKE else shutil.which("compute-sanitizer")
    if sanitizer is None:
        run = run_command(forward + (["--cpu"] if SMOKE else []), stage.remaining(), env)
        if not SMOKE:  # on a GPU machine without the sanitizer, the check did not happen
            stage.fail("compute-sanitizer is not on PATH")
    else:
        # application-only: the compilers Triton starts (ptxas) are not CUDA programs.
        run = run_command([sanitizer, "--tool", "memcheck", "--error-exitcode", "3",
                           "--target-processes", "application-only"] + forward, stage.remaining(), env)
    tail = run.get("output_tail", "")
    errors = re.findall(r"ERROR SUMMARY: (\d+) error", tail)
    stage.record.update(sanitizer=sanitizer, run=run, errors=int(errors[-1]) if errors else None,
                        forwards=[{"backend": b, "dtype": d, "relative_error": float(e)}
                                  for b, d, e in _FORWARD.findall(tail)])
    if run.get("timed_out"):
        stage.cut(f"the budget ended the run after {len(stage.record['forwards'])} forward(s)")
    elif run.get("rc") != 0:
        stage.fail(f"the forward exited {run.get('rc')} (3: memcheck found errors; 1: an answer was wrong)")
    elif sanitizer is not None and not errors:
        stage.fail("memcheck printed no ERROR SUMMARY")
    elif errors and int(errors[-1]):
        stage.fail(f"memcheck found {errors[-1]} error(s)")


if __name__ == "__main__":
    sys.exit(stage_main("sanitizer", body))
