"""The one place the GPU check's stages and time budgets are written (``gpu_check.sh`` reads them from here).

The check must fit a device lease twice over: 15 minutes of device time in all (machine start and idle time
included), at most 10 minutes a command. So the whole default run takes at most ``TOTAL_S`` = 270 s, backstop
timeouts included, and a second run after a fix still fits.

Per stage: ``budget_s`` is what the stage paces itself to (it stops starting work when the budget is near and
records what it did not reach); ``timeout`` kills it ``GRACE_S`` later, and ``KILL_AFTER_S`` after that a stage
that ignored the signal. So a default run takes at most ``sum(budget + GRACE_S + KILL_AFTER_S)`` plus
``SUMMARY_S`` for the summary, which ``worst_case_s()`` adds up and ``tests/test_gpu_check.py`` holds to ``TOTAL_S``.

Smoke mode (no CUDA device, or ``HRNET_FAST_GPU_CHECK_SMOKE=1``) runs the same stages with every budget
multiplied by ``SMOKE_SCALE``: on a 2-core CI machine the tiny models are quick, but each pytest process of the
tests stage spends 6-15 s importing torch and the package, so the smoke budgets are a little larger than the GPU
ones (the smoke run itself takes about two minutes). ``HRNET_FAST_GPU_CHECK_SMOKE_SCALE`` sets another factor (a
machine shared with other work needs more; the stages' own caps scale with it).

    python benchmarks/gpu_check_plan.py [--smoke] [--stage NAME[,NAME]]   # "stage budget timeout kill_after" lines
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

TOTAL_S = 270

# Stage -> budget in seconds on an H100 machine (16 cores), in the order the default run takes them.
#   build      pip install -e . with the CUDA kernels for the device's own architecture only: about 45 s of
#              compiling (replay.cpp, the slowest translation unit, took 45 s alone on a 2-core EPYC; with one
#              core per translation unit the build takes about as long as that one), plus pip's own work. The
#              most generous margin: every later stage needs the build.
#   tests      the curated GPU test subset (gpu_check_test_list.py), chunks in parallel processes.
#   sanitizer  compute-sanitizer memcheck over one small converted forward per backend.
#   measure    the priority: interleaved latency of every implementation per (model, batch, dtype) cell.
#   ops        the fused ops beside what they replace on W18's own calls (most-called first).
DEFAULT_STAGES: Dict[str, int] = {"build": 65, "tests": 50, "sanitizer": 25, "measure": 85, "ops": 15}
# Stages only run when named with --stage: the seed's latency table through `hrnet-fast bench` (the measure
# stage times the same implementations and more, interleaved in one process, so the default run leaves it out),
# then the pose and segmentation pipelines end to end.
OPTIONAL_STAGES: Dict[str, int] = {"latency": 120}
BUDGETS: Dict[str, int] = {**DEFAULT_STAGES, **OPTIONAL_STAGES}

GRACE_S = 3        # timeout's SIGTERM comes this long after the budget (the stage then records itself as cut)
KILL_AFTER_S = 2   # and SIGKILL this long after SIGTERM
SUMMARY_S = 5      # the summary (no torch import)
SCALE_ENV = "HRNET_FAST_GPU_CHECK_SMOKE_SCALE"
SMOKE_SCALE = float(os.environ.get(SCALE_ENV, "1.5"))  # a loaded CI machine may ask for more

SMOKE_ENV = "HRNET_FAST_GPU_CHECK_SMOKE"


def worst_case_s(stages: Sequence[str] = tuple(DEFAULT_STAGES)) -> int:
    """The longest ``gpu_check.sh`` can take for ``stages`` (every stage running into its backstop)."""
    return sum(BUDGETS[s] + GRACE_S + KILL_AFTER_S for s in stages) + SUMMARY_S


def smoke_mode() -> bool:
    """Smoke mode: forced by ``HRNET_FAST_GPU_CHECK_SMOKE=1``, else whenever torch sees no CUDA device (the test
    the stages make too, so the shell's budgets and the stages' sizes agree)."""
    if os.environ.get(SMOKE_ENV) == "1":
        return True
    import torch  # only here: the budget arithmetic above needs no torch
    return not torch.cuda.is_available()


def budget(stage: str, smoke: bool) -> float:
    """The stage's budget in seconds, scaled in smoke mode."""
    return BUDGETS[stage] * (SMOKE_SCALE if smoke else 1.0)


def parse_stages(text: Optional[str]) -> List[str]:
    """The stages ``--stage a,b`` names, in the default order (the optional ones last); all default stages for
    None. ValueError naming the valid stages for an unknown one."""
    if text is None:
        return list(DEFAULT_STAGES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUDGETS]
    if unknown or not names:
        raise ValueError(f"unknown stage(s) {', '.join(unknown) or repr(text)}; choose from {', '.join(BUDGETS)}")
    return [s for s in BUDGETS if s in names]


def schedule(stages: Sequence[str], smoke: bool) -> List[Tuple[str, int, int, int]]:
    """(stage, budget, timeout, kill_after) per stage, whole seconds (what the shell passes to ``timeout``)."""
    rows = []
    for s in stages:
        b = max(1, round(budget(s, smoke)))
        rows.append((s, b, b + GRACE_S, KILL_AFTER_S))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="the GPU check's stages and budgets, one line per stage")
    parser.add_argument("--smoke", action="store_true", help="smoke budgets (default: smoke_mode() decides)")
    parser.add_argument("--stage", default=None, help="comma-separated stages (default: the default run's)")
    args = parser.parse_args(argv)
    try:
        stages = parse_stages(args.stage)
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    for row in schedule(stages, args.smoke or smoke_mode()):
        print(*row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
