"""Which measurements a busy machine disturbed, so the report can mark them instead of printing them as valid.

Other work on the machine only ever adds time, and it adds it unevenly. Three signs, each cheap and each seen in
practice (FP32 W18 at batch 1 timed at 366 ms, slower than batch 4 at 222 ms, while another job ran):

- spread: the repeated calls of one cell disagree, ``(p80 - p20) / median`` above ``SPREAD_LIMIT`` (quiet runs
  of this benchmark stay within a few per cent);
- batch order: a larger batch is faster per call than a smaller one of the same implementation and precision, by
  more than ``INVERSION_MARGIN``. The smaller batch's cell is marked: a disturbance slows, it never speeds up;
- load: at the start the 1-minute load average left fewer idle cores than the threads the run asked for
  (``LOAD_SLACK`` allows for this process starting up). It concerns the whole run, not one cell.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..timing import TimingStats
from .environment import equivalent_command
from .settings import Settings

SPREAD_LIMIT = 0.25
INVERSION_MARGIN = 0.05
LOAD_SLACK = 0.5

Cell = Tuple[str, str, int, str]  # (model, dtype, batch, implementation)


@dataclass
class Disturbances:
    """The marked cells with their reasons, the run-wide load finding, and how to rerun."""

    cells: Dict[Cell, List[str]] = field(default_factory=dict)
    load: Optional[str] = None
    rerun: Optional[str] = None

    def __bool__(self) -> bool:
        return bool(self.cells) or self.load is not None

    def of(self, cell: Cell) -> List[str]:
        return self.cells.get(cell, [])


def spread_reason(stats: TimingStats) -> Optional[str]:
    """Why ``stats``' samples disagree too much to trust their median, or None."""
    spread = (stats.p80_ms - stats.p20_ms) / stats.median_ms if stats.median_ms > 0 else 0.0
    if spread <= SPREAD_LIMIT:
        return None
    return (f"repeated calls disagree: p20-p80 {stats.p20_ms:.2f}-{stats.p80_ms:.2f} ms, {spread:.0%} of the "
            f"median (above {SPREAD_LIMIT:.0%})")


def batch_order_reasons(timings: Dict[Cell, TimingStats]) -> Dict[Cell, str]:
    """Cells slower per call than a larger batch of the same model, precision and implementation."""
    series: Dict[Tuple[str, str, str], Dict[int, float]] = {}
    for (model, dtype, batch, impl), t in timings.items():
        series.setdefault((model, dtype, impl), {})[batch] = t.median_ms
    found = {}
    for (model, dtype, impl), medians in series.items():
        batches = sorted(medians)
        for i, small in enumerate(batches):
            faster = [big for big in batches[i + 1:] if medians[big] < medians[small] * (1 - INVERSION_MARGIN)]
            if faster:
                big = faster[0]
                found[(model, dtype, small, impl)] = (
                    f"slower per call ({medians[small]:.2f} ms) than batch {big} ({medians[big]:.2f} ms)")
    return found


def load_reason(load_before: Optional[float], cpu_count: Optional[int], threads: int) -> Optional[str]:
    """Why the machine was too busy at the start for ``threads`` threads, or None (None too where the OS reports
    no load average)."""
    if load_before is None or not cpu_count:
        return None
    if load_before <= cpu_count - threads + LOAD_SLACK:
        return None
    return (f"the machine was busy at the start: 1-minute load average {load_before:.2f} on {cpu_count} cores, "
            f"with {threads} thread(s) asked for")


def rerun_command(settings: Settings, cells: Dict[Cell, List[str]]) -> str:
    """The command that repeats the disturbed part of the run: the models and precisions of the marked cells (all
    of them after a load finding), every batch (the batch-order check needs them), twice the time per cell."""
    models = [m for m in settings.models if not cells or any(c[0] == m for c in cells)]
    dtypes = [d for d in settings.dtypes if not cells or any(c[1] == d for c in cells)]
    longer = dict(min_time=max(2 * settings.min_time, 10.0)) if settings.reps is None else dict(reps=2 * settings.reps)
    return equivalent_command(dataclasses.replace(settings, models=models, dtypes=dtypes, **longer))


def find_disturbances(settings: Settings, timings: Dict[Cell, TimingStats], env: Dict[str, Any]) -> Disturbances:
    """Every sign of disturbance in one run's ``timings``, with the environment recorded at its start."""
    cells: Dict[Cell, List[str]] = {}
    for cell, stats in timings.items():
        why = spread_reason(stats)
        if why:
            cells.setdefault(cell, []).append(why)
    for cell, why in batch_order_reasons(timings).items():
        cells.setdefault(cell, []).append(why)
    # On a GPU the host runs one Python thread launching kernels; on the CPU every thread asked for computes.
    threads = (env.get("torch_threads") or 1) if settings.device.type == "cpu" else 1
    load = load_reason(env.get("load_average_1m_before"), env.get("cpu_count"), threads)
    found = Disturbances(cells, load)
    if found:
        found.rerun = rerun_command(settings, cells)
    return found
