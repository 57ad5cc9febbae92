"""What the run says on stderr while it works: the plan before anything is built (implementations x cells, and
the least time the timing will take), then a line per implementation built and per cell timed. A run with every
peer takes many minutes (``torch.compile`` alone compiles for minutes); these lines say where it is."""
from __future__ import annotations

import sys
from typing import Callable, Optional

from .settings import Settings

Log = Callable[[str], None]


def stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def format_plan(s: Settings) -> str:
    """The run's shape: per precision, the implementations timed in each cell, and how many timings that makes
    (each at least ``--min-time`` seconds of timed calls, each timed call after an untimed one)."""
    cells = len(s.models) * len(s.batches)
    lines = [f"hrnet-fast bench plan: {len(s.models)} model(s) x {len(s.dtypes)} precision(s) x "
             f"{len(s.batches)} batch size(s) on {s.device}"]
    timings = 0
    for dtype in s.dtypes:
        impls = [impl for impl in s.implementations if s.runs(impl, dtype)]
        timings += len(impls) * cells
        lines.append(f"  {dtype}: {len(impls)} implementations x {cells} cell(s): {', '.join(impls)}")
    if s.reps is not None:
        lines.append(f"  {timings} timings of {s.reps} timed call(s) each, plus building each implementation")
    else:
        # Each timed call is preceded by an untimed one: twice the timed time at the least.
        least = 2 * s.min_time * timings
        lines.append(f"  {timings} timings of >= {s.min_time:g} s of timed calls each: at least {_minutes(least)}, "
                     f"plus building each implementation" + (" (torch.compile: minutes)" if "compile" in s.peers
                                                             else ""))
    return "\n".join(lines)


class Progress:
    """Numbered progress lines for one run, written with ``log``."""

    def __init__(self, settings: Settings, log: Optional[Log] = None):
        self.log = log
        self.cells = len(settings.models) * len(settings.dtypes) * len(settings.batches)
        self.done = 0

    def say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    def built(self, where: str, impl: str, index: int, total: int, seconds: float,
              failure: Optional[str] = None) -> None:
        outcome = f"failed ({failure})" if failure else f"ready in {seconds:.1f} s"
        self.say(f"[{where}] implementation {index}/{total} {impl}: {outcome}")

    def timed(self, where: str, impls: int, seconds: float) -> None:
        self.done += 1
        self.say(f"[{where}] cell {self.done}/{self.cells} timed: {impls} implementations in {seconds:.1f} s")
