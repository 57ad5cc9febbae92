"""What a run prints (markdown in the seed's table layout) and writes (``--json``)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, List, Sequence

from .disturbance import Disturbances, find_disturbances
from .environment import command_line, equivalent_command
from .peers import LABELS
from .runner import CALIBRATION, COUNT_BATCH, Results

MARK = "(!)"  # beside a figure the run itself shows to be disturbed (hrnet_fast.bench.disturbance)


def _ms(v: float) -> str:
    return f"{v:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":--:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _latency(results: Results, marks: Disturbances, model: str, dtype: str, batch: int, impl: str) -> str:
    """The cell's median (marked where disturbed), or why its peer has none."""
    t = results.timings.get((model, dtype, batch, impl))
    if t is None:
        return f"failed: {results.failed[(model, dtype, impl)]}"
    return _ms(t.median_ms) + (f" {MARK}" if marks.of((model, dtype, batch, impl)) else "")


def _facts(info: Dict[str, str]) -> str:
    return ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in info.items())


def cpu_precision_line(env: Dict[str, Any]) -> str:
    """Which reduced precisions this CPU runs natively (oneDNN), and on what instructions."""
    native = env["cpu_native_dtypes"]
    parts = []
    for name, short in (("bfloat16", "bf16"), ("float16", "fp16")):
        how = native.get(f"{name}_how")
        parts.append(f"{short} native ({how})" if native[name] else f"{short} not native (no oneDNN {short} path)")
    cap = native.get("onednn_isa_cap")
    return (f"CPU precisions: {', '.join(parts)}; ATen vector level {native['capability']}"
            + (f", oneDNN capped at {cap}." if cap else "."))


def _latency_tables(results: Results, marks: Disturbances) -> List[str]:
    s = results.settings
    out = []
    batch_cols = [f"batch_size={b} (ms)" for b in s.batches]
    for dtype in s.dtypes:
        for impl in s.implementations:
            if not s.runs(impl, dtype):
                continue
            rows = [[m] + [_latency(results, marks, m, dtype, b, impl) for b in s.batches] for m in s.models]
            out += [f"### {dtype.upper()}, {LABELS[impl]}", ""]
            facts = [f"{m}: {_facts(results.info[(m, dtype, impl)])} (as its runtime reports it)"
                     for m in s.models if (m, dtype, impl) in results.info]
            out += ([*facts, ""] if facts else []) + [_table(["Models"] + batch_cols, rows), ""]
    return out


def _speedup(results: Results, marks: Disturbances, model: str, dtype: str, batch: int, impl: str) -> str:
    """The ratio of medians, marked where either cell is disturbed."""
    ratio = results.speedup(model, dtype, batch, impl)
    if ratio is None:
        return "failed"
    disturbed = marks.of((model, dtype, batch, impl)) or marks.of((model, dtype, batch, "reference"))
    return f"{ratio:.2f}x" + (f" {MARK}" if disturbed else "")


def _speedup_table(results: Results, marks: Disturbances) -> List[str]:
    s = results.settings
    rows = []
    for m in s.models:
        for dtype in s.dtypes:
            for impl in s.implementations[1:]:
                if s.runs(impl, dtype):
                    rows.append([m, dtype.upper(), impl] + [_speedup(results, marks, m, dtype, b, impl)
                                                            for b in s.batches])
    return ["### Speed-up vs the reference at the same precision (ratio of medians, >1 is faster)", "",
            _table(["Models", "Precision", "Implementation"] + [f"batch_size={b}" for b in s.batches], rows), ""]


def _dispatch_table(results: Results) -> List[str]:
    s = results.settings
    rows = []
    for m in s.models:
        for dtype in s.dtypes:
            ref, conv = results.counts[(m, dtype, "reference")], results.counts[(m, dtype, "converted")]
            rows.append([m, dtype.upper(), str(ref.ops), str(conv.ops), f"{ref.ops / max(conv.ops, 1):.2f}x",
                         f"{ref.bytes_written / 1e6:.1f}", f"{conv.bytes_written / 1e6:.1f}",
                         f"{ref.bytes_written / max(conv.bytes_written, 1):.2f}x"])
    return [f"### Per forward at batch {COUNT_BATCH}: ops dispatched and activation bytes written "
            "(launch count and memory traffic on a GPU)", "",
            _table(["Models", "Precision", "Ops (reference)", "Ops (converted)", "Fewer ops",
                    "Written MB (reference)", "Written MB (converted)", "Fewer bytes"], rows), ""]


def _disturbance_section(marks: Disturbances) -> List[str]:
    """What was disturbed, why, and the command that measures it again."""
    if not marks:
        return []
    out = [f"### Disturbed measurements (marked {MARK}): not valid as they stand", ""]
    out += [f"- {m} {d.upper()} {impl} batch {b}: {'; '.join(why)}" for (m, d, b, impl), why in marks.cells.items()]
    if marks.load:
        out.append(f"- The whole run: {marks.load}.")
    out += ["", "Rerun on a quiet machine (`uptime` shows the load), or on a busy one with `--threads 1` and more "
            f"time per cell: `{marks.rerun}`", ""]
    return out


def _error_table(results: Results) -> List[str]:
    """Every implementation's output difference from the FP32 reference, and beside it eager PyTorch's own at the
    same precision: the rounding any implementation of that precision starts from."""
    s = results.settings
    rows = []
    for m in s.models:
        for dtype in s.dtypes:
            eager = results.rel_error.get((m, dtype, "reference"))
            for impl in s.implementations:
                err = results.rel_error.get((m, dtype, impl))
                if err is not None:
                    rows.append([m, dtype.upper(), impl, f"{err:.1e}", "-" if eager is None else f"{eager:.1e}"])
    return [f"### Output difference vs the FP32 reference at batch {s.batches[0]} (relative L2)", "",
            _table(["Models", "Precision", "Implementation", "vs FP32 reference",
                    "eager PyTorch at this precision vs FP32 reference"], rows), ""]


def format_report(results: Results, env: Dict[str, Any]) -> str:
    """The markdown the command prints: latency per precision and implementation (seed layout), speed-ups,
    dispatch counts and bytes, params and FLOPs."""
    s = results.settings
    h, w = s.input_size
    out = [f"## hrnet-fast bench: {env['device_name']} ({s.device}, CPU threads: {env['torch_threads']}), "
           f"torch {env['torch']}, input {h}x{w}",
           f"Median latency of {s.reps or f'>= {s.min_time:g} s of'} timed calls per cell, implementations "
           f"interleaved, each timed call right after an untimed one of the same implementation; p20/p80 in --json."]
    if s.device.type == "cpu":
        out.append(cpu_precision_line(env))
    marks = find_disturbances(s, results.timings, env)
    if marks:
        out.append(f"**Disturbed run**: {len(marks.cells)} cell(s) marked {MARK}"
                   + (", and the machine was busy at the start" if marks.load else "")
                   + ": see \"Disturbed measurements\" below for why and how to rerun.")
    out.append("")
    out += _latency_tables(results, marks) + _speedup_table(results, marks) + _disturbance_section(marks)
    out += _dispatch_table(results)
    out += [f"### Params and FLOPs at {h}x{w}", ""]
    rows = [[m, f"{p['params'] / 1e6:.2f}", f"{p['macs'] / 1e9:.3f}", f"{p['flops'] / 1e9:.3f}"]
            for m, p in results.profiles.items()]
    out += [_table(["Models", "Params (M)", "MACs (G)", "FLOPs (G, MMCls convention)"], rows), ""]
    out += _error_table(results) + [f"Wall time {results.wall_s:.0f} s."]
    return "\n".join(out)


def to_json(results: Results, env: Dict[str, Any]) -> Dict[str, Any]:
    """Every figure of the run, with the environment and the command line."""
    s = results.settings
    marks = find_disturbances(s, results.timings, env)
    records = []
    for (m, dtype, batch, impl), t in results.timings.items():
        records.append({"model": m, "dtype": dtype, "batch": batch, "implementation": impl, **t.as_dict(),
                        "speedup_vs_reference": results.speedup(m, dtype, batch, impl),
                        "disturbed": marks.of((m, dtype, batch, impl))})
    models = {}
    for m in s.models:
        counts = {dtype: {impl: results.counts[(m, dtype, impl)].as_dict() for impl in ("reference", "converted")}
                  for dtype in s.dtypes}
        errors = {dtype: {impl: e for (mm, d, impl), e in results.rel_error.items() if mm == m and d == dtype}
                  for dtype in s.dtypes}
        info = {dtype: {impl: facts for (mm, d, impl), facts in results.info.items() if mm == m and d == dtype}
                for dtype in s.dtypes}
        failed = {dtype: {impl: why for (mm, d, impl), why in results.failed.items() if mm == m and d == dtype}
                  for dtype in s.dtypes}
        models[m] = {**results.profiles[m], "dispatch_per_forward": counts, "count_batch": COUNT_BATCH,
                     "rel_error_vs_fp32_reference": errors, "implementation_info": info, "failed": failed}
    return {
        "schema": "hrnet_fast.bench/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "equivalent_command": equivalent_command(s),
        "environment": env,
        "settings": {"models": s.models, "batches": s.batches, "dtypes": s.dtypes, "device": str(s.device),
                     "input_size": list(s.input_size), "implementations": s.implementations,
                     "cuda_graph": s.cuda_graph, "threads": s.threads, "warmup": s.warmup, "reps": s.reps,
                     "min_time_s": s.min_time, "calibration": CALIBRATION},
        "wall_s": results.wall_s,
        # Marked cells carry their reasons under "disturbed"; the run-wide load finding and the rerun are here.
        "disturbance": {"cells": len(marks.cells), "load_at_start": marks.load, "rerun": marks.rerun},
        "models": models,
        "results": records,
    }
