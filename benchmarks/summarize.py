"""Turns the results in benchmarks/results/ into benchmarks/results/SUMMARY.md.

    python benchmarks/summarize.py [--results DIR] [--out PATH]

Three kinds of JSON file: ``hrnet-fast bench --json`` runs (model latency), ``pytest benchmarks/
--benchmark-json`` runs (op level), and the results of the measurement scripts in benchmarks/ (``python
benchmarks/<script>.py ... --json``: CPU overhead split, conv call cost, page faults), listed last with their
command and figures. One section per device: measured medians (ms) per model, precision and
implementation, each non-reference cell with its speed-up over the eager reference, beside the PaddleClas latency
table the project started from, and the ops/bytes dispatched per forward; then, per op-level run, each op beside
its eager composition on HRNet-W18's shapes.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
SCHEMA = "hrnet_fast.bench/1"

# PaddleClas "HRNet系列" model page (seed document /work/shared/seeds/000_636e2203839b502e.txt), tables
# "FP16预测速度" and "FP32预测速度": inference latency in ms at batch 1, 4, 8, 32, crop 224. The page does not
# name its hardware (PaddleClas gives tables of this kind for TensorRT on V100 / T4 elsewhere).
SEED_BATCHES = (1, 4, 8, 32)
SEED_LATENCY_MS: Dict[str, Dict[str, Tuple[float, float, float, float]]] = {
    "fp16": {
        "hrnet_w18": (6.188, 7.207, 9.149, 18.221),
        "hrnet_w30": (7.941, 8.851, 10.540, 21.129),
        "hrnet_w32": (7.904, 8.890, 10.752, 21.159),
        "hrnet_w40": (9.233, 11.600, 13.927, 29.868),
        "hrnet_w44": (9.917, 12.119, 15.555, 31.948),
        "hrnet_w48": (10.198, 12.399, 15.572, 32.210),
        "hrnet_w64": (12.264, 14.552, 18.251, 41.106),
    },
    "fp32": {
        "hrnet_w18": (6.828, 8.552, 11.154, 30.665),
        "hrnet_w30": (8.901, 11.067, 14.421, 43.459),
        "hrnet_w32": (8.983, 11.334, 14.688, 44.564),
        "hrnet_w40": (10.300, 14.720, 20.257, 64.346),
        "hrnet_w44": (11.183, 15.830, 25.292, 73.136),
        "hrnet_w48": (11.619, 16.791, 26.569, 77.536),
        "hrnet_w64": (14.434, 20.988, 35.114, 117.434),
    },
}
SEED_LABEL = "PaddleClas table (hardware not stated)"


def is_pytest_benchmark(data: Dict) -> bool:
    """A ``pytest --benchmark-json`` file written with benchmarks/conftest.py's machine info."""
    return "benchmarks" in data and "hrnet_fast" in data.get("machine_info", {})


def is_script_result(data: Dict) -> bool:
    """The ``--json`` output of one of the measurement scripts in benchmarks/ (it records its command)."""
    words = str(data.get("command", "")).split()
    while words and "=" in words[0]:  # the environment it recorded (script_support.command)
        words.pop(0)
    return " ".join(words[:2]).startswith("python benchmarks/") and data.get("schema") is None


def load_results(directory: Path) -> List[Tuple[str, Dict]]:
    """(file name, parsed JSON) for every result in ``directory``, sorted by name."""
    runs = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA and not is_pytest_benchmark(data) and not is_script_result(data):
            raise ValueError(f"{path} is neither an hrnet-fast bench result (schema {SCHEMA!r}), a pytest "
                             f"benchmarks/ --benchmark-json result nor a benchmarks/ script's --json result")
        runs.append((path.name, data))
    return runs


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def latency_table(data: Dict) -> str:
    """Models x precision x implementation rows, batch columns (the run's and the seed's)."""
    settings = data["settings"]
    batches = sorted(set(settings["batches"]) | set(SEED_BATCHES))
    cells: Dict[Tuple[str, str, str], Dict[int, Dict]] = defaultdict(dict)
    for r in data["results"]:
        cells[(r["model"], r["dtype"], r["implementation"])][r["batch"]] = r
    lines = [_row(["Models", "Precision", "Implementation"] + [f"batch_size={b} (ms)" for b in batches]),
             _row([":--:"] * (3 + len(batches)))]
    for model in settings["models"]:
        for dtype in settings["dtypes"]:
            for impl in settings["implementations"]:
                measured = cells.get((model, dtype, impl))
                if not measured:
                    continue
                lines.append(_row([model, dtype.upper(), impl] + [_cell(measured.get(b)) for b in batches]))
            seed = SEED_LATENCY_MS.get(dtype, {}).get(model)
            if seed is not None:
                by_batch = dict(zip(SEED_BATCHES, seed))
                lines.append(_row([model, dtype.upper(), SEED_LABEL] +
                                  [f"{by_batch[b]:.3f}" if b in by_batch else "–" for b in batches]))
    return "\n".join(lines)


def _load(env: Dict, when: str) -> str:
    value = env.get(f"load_average_1m_{when}")
    return "unknown" if value is None else f"{value:.1f}"


def _cell(record: Optional[Dict]) -> str:
    """``median [p20-p80]`` and, beside a non-reference median, its speed-up."""
    if record is None:
        return "–"
    text = f"{record['median_ms']:.2f} [{record['p20_ms']:.4g}–{record['p80_ms']:.4g}]"
    if record["implementation"] != "reference" and record.get("speedup_vs_reference"):
        text += f" ({record['speedup_vs_reference']:.2f}x)"
    return text


def runtime_facts(data: Dict) -> List[str]:
    """What the run's CPU and runtimes chose for themselves: natively run precisions, OpenVINO's precision."""
    lines = []
    native = data["environment"].get("cpu_native_dtypes")
    if native is not None and data["environment"]["device"] == "cpu":
        found = [f"{short} ({native[f'{name}_how']})" for name, short in (("bfloat16", "bf16"), ("float16", "fp16"))
                 if native[name]]
        lines.append(f"Native reduced precisions on this CPU: {', '.join(found) or 'none'}.")
    for model, info in data["models"].items():
        for dtype, impls in info.get("implementation_info", {}).items():
            for impl, facts in impls.items():
                text = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in facts.items())
                lines.append(f"{model} {dtype.upper()} {impl}: {text}.")
    return lines


def dispatch_table(data: Dict) -> str:
    """Ops dispatched and activation MB written per forward, reference vs converted."""
    lines = [_row(["Models", "Precision", "Ops (reference)", "Ops (converted)", "Written MB (reference)",
                   "Written MB (converted)"]), _row([":--:"] * 6)]
    for model, info in data["models"].items():
        for dtype, counts in info["dispatch_per_forward"].items():
            ref, conv = counts["reference"], counts["converted"]
            lines.append(_row([model, dtype.upper(), str(ref["ops"]), str(conv["ops"]),
                               f"{ref['bytes_written'] / 1e6:.1f}", f"{conv['bytes_written'] / 1e6:.1f}"]))
    return "\n".join(lines)


def op_tables(data: Dict) -> str:
    """Per op, one row per benchmark group (shape, precision, batch): each implementation's median in us with
    [q1-q3], its speed-up over the group's first (eager) implementation, and the rate (TFLOP/s or GB/s) each
    implementation reached on the same amount of work."""
    groups: Dict[str, Dict[str, Dict]] = defaultdict(dict)
    impls: Dict[str, List[str]] = defaultdict(list)
    for b in data["benchmarks"]:
        op = b["group"].split()[0]
        impl = b["params"]["impl"]
        groups[b["group"]][impl] = b
        if impl not in impls[op]:
            impls[op].append(impl)
    out = []
    for op, names in impls.items():
        lines = [_row(["shape, precision, batch"] + [f"{n} (us)" for n in names]), _row([":--"] + [":--:"] * len(names))]
        for group, cells in groups.items():
            if group.split()[0] != op:
                continue
            base = cells.get(names[0])
            row = [group[len(op) + 1:]]
            for n in names:
                b = cells.get(n)
                if b is None:
                    row.append("–")
                    continue
                st = b["stats"]
                text = f"{st['median'] * 1e6:.1f} [{st['q1'] * 1e6:.4g}–{st['q3'] * 1e6:.4g}]"
                if base is not None and n != names[0]:
                    text += f" ({base['stats']['median'] / st['median']:.2f}x)"
                rate = next(((k, v) for k, v in b["extra_info"].items() if k.endswith("/s")), None)
                if rate is not None:
                    text += f", {rate[1]:.3g} {rate[0]}"
                row.append(text)
            lines.append(_row(row))
        out += [f"#### {op}", "", "\n".join(lines), ""]
    return "\n".join(out)


def script_section(name: str, data: Dict) -> List[str]:
    """A measurement script's result: its command, its scalar figures, and its ``rows`` as a table."""
    scalars = [f"{k} {v}" for k, v in data.items() if k not in ("command", "rows") and not isinstance(v, dict)]
    out = [f"### {name}", "", f"`{data['command']}`: " + "; ".join(scalars) + ".", ""]
    rows = data.get("rows") or []
    if rows:
        keys = list(rows[0])
        out += [_row(keys), _row([":--:"] * len(keys))] + [_row(str(r.get(k, "–")) for k in keys) for r in rows]
        out.append("")
    return out


def _environment(data: Dict) -> Dict:
    return data["machine_info"]["hrnet_fast"] if is_pytest_benchmark(data) else data["environment"]


def summarize(runs: List[Tuple[str, Dict]]) -> str:
    """The SUMMARY.md text for ``runs``, one section per device."""
    by_device: Dict[str, List[Tuple[str, Dict]]] = defaultdict(list)
    scripts = [(name, data) for name, data in runs if is_script_result(data)]
    for name, data in runs:
        if is_script_result(data):
            continue
        env = _environment(data)
        by_device[f"{env['device_name']} ({env['device']})"].append((name, data))
    out = ["# Benchmark summary", "",
           "Generated by `python benchmarks/summarize.py` from the JSON files beside it; do not edit by hand.",
           "Medians in ms with [p20–p80]; a non-reference cell's ratio is its speed-up over the eager reference at the same "
           "precision (higher is faster). The PaddleClas rows are the seed's published figures, on hardware the "
           "page does not name: read them as a scale, not as a comparison on one machine.", ""]
    if not runs:
        out.append("No results yet: run `hrnet-fast bench --json benchmarks/results/<device>-<models>.json`.")
    for device, entries in by_device.items():
        out += [f"## {device}", ""]
        for name, data in sorted(entries, key=lambda e: is_pytest_benchmark(e[1])):
            if is_pytest_benchmark(data):
                env = _environment(data)
                out += [f"### {name} (op level)", "",
                        f"`{env['command']}` on {data['datetime']}: torch {env['torch']}, CUDA {env['cuda']}, "
                        f"triton {env['triton']}, {env['device_name']} ({env['torch_threads']} threads), 1-minute "
                        f"load average {_load(env, 'before')} at the start. A ratio is the speed-up over the row's "
                        f"first column.", "", op_tables(data), ""]
                continue
            env, s = _environment(data), data["settings"]
            h, w = s["input_size"]
            out += [f"### {name}", "",
                    f"`{data['command']}` on {data['created']}: torch {env['torch']}, CUDA {env['cuda']}, "
                    f"triton {env['triton']}, CPU {env['cpu_model']} ({env['torch_threads']} threads), "
                    f"input {h}x{w}, 1-minute load average {_load(env, 'before')} before and "
                    f"{_load(env, 'after')} after.", "",
                    latency_table(data), ""]
            facts = runtime_facts(data)
            out += ([*facts, ""] if facts else []) + ["Per forward at batch 1:", "", dispatch_table(data), ""]
    if scripts:
        out += ["## Measurement scripts (benchmarks/*.py)", ""]
        for name, data in scripts:
            out += script_section(name, data)
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results", help="folder of bench JSON files")
    parser.add_argument("--out", type=Path, default=None, help="output (default: RESULTS/SUMMARY.md)")
    args = parser.parse_args(argv)
    out = args.out or args.results / "SUMMARY.md"
    out.write_text(summarize(load_results(args.results)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
