"""Writes OUTDIR/summary.json and prints it: every stage whose JSON is in OUTDIR (a rerun with --stage keeps the
others' records, and their exit statuses from the summary before), then the measure stage's table.

    python benchmarks/gpu_check_summary.py OUTDIR [STAGE=EXIT ...]     # exits of the stages just run

Per stage: status (a JSON still saying "running" after its process ended was killed: "killed"), wall time and
budget, why it was cut, its failures' first lines and one line of figures. The measure table: per cell, the
median ms of each implementation and its ratio to eager PyTorch captured in a CUDA graph (``eager_cuda_graph``;
where that did not run, to eager NCHW, as the header says); > 1 is faster than the baseline.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional

from gpu_check_plan import BUDGETS

SHORT = {"eager_nchw": "eager", "eager_channels_last": "eager_cl", "eager_cuda_graph": "eager_graph",
         "compile_max_autotune": "compile", "converted_cuda": "conv_cuda", "converted_cuda_graph": "conv_cuda_g",
         "converted_cuda_graph_parallel": "conv_cuda_gp", "converted_triton_graph": "conv_trit_g"}
BASELINES = ("eager_cuda_graph", "eager_nchw")


def _load(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def figures(stage: str, rec: Dict[str, Any]) -> str:
    """One line of the stage's headline figures."""
    if stage == "build":
        b = rec.get("build", {})
        slowest = b.get("slowest") or {}
        return (b.get("skipped") or f"build {b.get('build_s')} s, slowest unit {slowest.get('source')} done at "
                                     f"{slowest.get('finished_s')} s")
    if stage == "tests":
        chunks = rec.get("chunks", {})
        passed = sum(1 for c in chunks.values() if c.get("status") == "passed")
        return f"{rec.get('counts')}; chunks passed {passed}/{len(chunks)}"
    if stage == "sanitizer":
        return f"memcheck errors {rec.get('errors')}; forwards checked {len(rec.get('forwards', []))}"
    if stage == "measure":
        cells = rec.get("cells", {})
        done = sum(1 for c in cells.values() if "impls" in c)
        return f"cells measured {done}/{len(cells)}"
    if stage == "ops":
        rows = rec.get("multires_fuse", []) + rec.get("conv_bn_act", [])
        return f"calls timed {sum(1 for r in rows if 'impls' in r)}/{len(rows)}"
    if stage == "latency":
        runs = [f"{name}: rc {run.get('rc')}" for name, run in rec.get("runs", {}).items()]
        return "runs " + ", ".join(runs)
    return ""


def stage_row(stage: str, rec: Optional[Dict[str, Any]], exit_code: Optional[int]) -> Dict[str, Any]:
    if rec is None:
        return {"status": "missing", "exit": exit_code}
    status = rec.get("status")
    if status == "running" and exit_code is not None:
        status = "killed"  # SIGKILL after ignoring the backstop's SIGTERM; what it saved last is in its JSON
    return {"status": status, "exit": exit_code, "wall_s": rec.get("wall_s"), "budget_s": rec.get("budget_s"),
            "smoke": rec.get("smoke"), "cut": rec.get("cut"),
            "failures": [f.strip().splitlines()[-1][:200] for f in rec.get("failures", [])],
            "figures": figures(stage, rec)}


def measure_table(rec: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per measured cell: ms per implementation, and the ratio baseline ms / ms."""
    rows = []
    for cell, c in rec.get("cells", {}).items():
        impls = c.get("impls")
        if impls is None:
            rows.append({"cell": cell, "status": c.get("status")})
            continue
        ms = {n: i.get("median_ms") for n, i in impls.items()}
        base = next((b for b in BASELINES if ms.get(b)), None)
        rows.append({"cell": cell, "baseline": base, "ms": ms,
                     "ratio": {n: (ms[base] / v if base and v else None) for n, v in ms.items()},
                     "status": {n: i.get("status") for n, i in impls.items() if i.get("status") != "ok"}})
    return rows


def print_table(rows: List[Dict[str, Any]], names: List[str]) -> None:
    print("measure: median ms (x ratio to the baseline; > 1 faster)")
    print(f"{'cell':24} {'base':11} " + " ".join(f"{SHORT.get(n, n):>16}" for n in names))
    for r in rows:
        if "ms" not in r:
            print(f"{r['cell']:24} {r['status']}")
            continue
        cells = []
        for n in names:
            v, q = r["ms"].get(n), r["ratio"].get(n)
            cells.append(f"{v:8.3f} ({q:4.2f}x)" if v and q else f"{'-':>16}")
        print(f"{r['cell']:24} {SHORT.get(r['baseline'], '-'):11} " + " ".join(cells))


def main(outdir: str, exits: List[str]) -> int:
    previous = _load(os.path.join(outdir, "summary.json")) or {}
    codes = {s: row.get("exit") for s, row in previous.get("stages", {}).items()}
    codes.update({k: int(v) for k, v in (e.split("=", 1) for e in exits)})
    stages = {}
    for stage in BUDGETS:
        rec = _load(os.path.join(outdir, f"{stage}.json"))
        if rec is not None or stage in codes:
            stages[stage] = stage_row(stage, rec, codes.get(stage))
    measure = _load(os.path.join(outdir, "measure.json"))
    summary = {"stages": stages, "measure": measure_table(measure) if measure else []}
    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    for stage, row in stages.items():
        print(f"{stage:10} {str(row['status']):8} {row.get('wall_s')!s:>6} s of {row.get('budget_s')!s:>5}  "
              f"{row.get('figures', '')}")
        for line in ([f"cut: {row['cut']}"] if row.get("cut") else []) + row.get("failures", []):
            print(f"{'':10} {line}")
    if summary["measure"]:
        print_table(summary["measure"], measure.get("implementations", list(SHORT)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
