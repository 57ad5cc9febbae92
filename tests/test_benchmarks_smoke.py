"""The benchmark suites run (tiny shapes, one round each) and their JSON carries the figures; the summary
generator renders a result beside the seed's figures. Timing values are not checked, only that they exist."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite_json(tmp_path_factory):
    """One pass of ``pytest benchmarks/`` with tiny shapes and one round per benchmark: (stdout, JSON)."""
    path = tmp_path_factory.mktemp("benchmarks") / "bench.json"
    env = dict(os.environ, HRNET_FAST_BENCH_TINY="1", PYTHONPATH=str(ROOT))
    env.pop("HRNET_FAST_BENCH_COMPILE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider",
         "--benchmark-min-rounds=1", "--benchmark-max-time=0", "--benchmark-warmup=off",
         f"--benchmark-json={path}"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc.stdout, json.loads(path.read_text())


def test_every_benchmark_passes_and_none_is_skipped(suite_json):
    stdout, data = suite_json
    summary = stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert not re.search(r"skipped|failed|error", summary), summary
    assert passed == len(data["benchmarks"]) > 0


def test_groups_put_reference_and_fused_side_by_side(suite_json):
    _, data = suite_json
    groups = defaultdict(set)
    for b in data["benchmarks"]:
        groups[b["group"]].add(b["params"].get("impl"))
    conv = [g for g in groups if g.startswith("conv_bn_act")]
    fuse = [g for g in groups if g.startswith("multires_fuse")]
    bilinear = [g for g in fuse if g.startswith("multires_fuse bilinear")]
    model = [g for g in groups if g.startswith("hrnet_w18_small")]
    # 7 conv shapes x 2 layouts; 4 nearest fusions; 3 segmentation fusions + the head's sum x 2 align_corners
    assert len(conv) == 7 * 2 and len(fuse) - len(bilinear) == 4 and len(bilinear) == 4 * 2 and len(model) == 1
    for g in conv:
        assert groups[g] == {"eager conv+BN+ReLU", "folded composition", "fused"}
    for g in fuse:
        assert groups[g] == {"eager upsample+add+ReLU", "fused", "copy (bandwidth ceiling)"}
    assert {"reference", "converted", "channels_last"} <= groups[model[0]]


def test_ops_report_throughput(suite_json):
    _, data = suite_json
    for b in data["benchmarks"]:
        unit = {"conv_bn_act": "TFLOP/s", "multires_fuse": "GB/s"}.get(b["group"].split()[0])
        if unit is not None:
            assert b["extra_info"][unit] > 0 and b["extra_info"]["amount"] > 0, b["name"]


def _summarize_module():
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "benchmarks" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(median_ref: float, median_conv: float) -> dict:
    records = [{"model": "hrnet_w18", "dtype": "fp32", "batch": 1, "implementation": impl, "median_ms": m,
                "p20_ms": m - 1, "p80_ms": m + 2, "reps": 5, "speedup_vs_reference": median_ref / m}
               for impl, m in (("reference", median_ref), ("converted", median_conv))]
    counts = {"reference": {"ops": 1471, "bytes_written": 232_600_000},
              "converted": {"ops": 400, "bytes_written": 80_000_000}}
    return {"schema": "hrnet_fast.bench/1", "created": "2025-01-01T00:00:00+00:00", "command": "hrnet-fast bench",
            "environment": {"device": "cpu", "device_name": "Test CPU", "torch": "2.x", "cuda": None,
                            "triton": None, "cpu_model": "Test CPU", "torch_threads": 2,
                            "load_average_1m_before": 0.5, "load_average_1m_after": 0.7},
            "settings": {"models": ["hrnet_w18"], "batches": [1], "dtypes": ["fp32"], "input_size": [224, 224],
                         "implementations": ["reference", "converted"]},
            "models": {"hrnet_w18": {"dispatch_per_forward": {"fp32": counts}}},
            "results": records}


def test_summary_puts_measurements_beside_the_seed_figures(tmp_path):
    summarize = _summarize_module()
    (tmp_path / "cpu-test-w18.json").write_text(json.dumps(_result(200.0, 80.0)))
    assert summarize.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "## Test CPU (cpu)" in text and "### cpu-test-w18.json" in text
    assert "load average 0.5 before and 0.7 after" in text
    assert "| hrnet_w18 | FP32 | reference | 200.00 [199–202] | – | – | – |" in text
    assert "| hrnet_w18 | FP32 | converted | 80.00 [79–82] (2.50x) | – | – | – |" in text
    # The seed's PaddleClas FP32 row for HRNet_W18_C.
    assert f"| hrnet_w18 | FP32 | {summarize.SEED_LABEL} | 6.828 | 8.552 | 11.154 | 30.665 |" in text
    assert "| hrnet_w18 | FP32 | 1471 | 400 | 232.6 | 80.0 |" in text


def test_summary_says_what_the_cpu_and_runtimes_chose(tmp_path):
    summarize = _summarize_module()
    result = _result(200.0, 80.0)
    result["environment"]["cpu_native_dtypes"] = {"bfloat16": True, "bfloat16_how": "AMX-BF16", "float16": False,
                                                  "float16_how": None}
    result["models"]["hrnet_w18"]["implementation_info"] = {
        "fp32": {"openvino_default": {"inference_precision": "bf16"}}}
    (tmp_path / "cpu-test-w18.json").write_text(json.dumps(result))
    assert summarize.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "Native reduced precisions on this CPU: bf16 (AMX-BF16)." in text
    assert "hrnet_w18 FP32 openvino_default: inference precision bf16." in text


def test_summary_rejects_foreign_json(tmp_path):
    summarize = _summarize_module()
    (tmp_path / "other.json").write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(ValueError, match="neither an hrnet-fast bench result"):
        summarize.main(["--results", str(tmp_path)])


def test_suite_json_records_its_environment_and_command(suite_json):
    _, data = suite_json
    env = data["machine_info"]["hrnet_fast"]
    assert env["torch"] == torch.__version__
    assert env["command"].startswith("pytest benchmarks/") and "--benchmark-json=" in env["command"]
    assert env["backends_selected"]["multires_fuse"] in ("cpu", "cuda", "triton", "torch")


def test_summary_renders_op_level_runs_with_speedups(suite_json, tmp_path):
    _, data = suite_json
    summarize = _summarize_module()
    (tmp_path / "ops.json").write_text(json.dumps(data))
    assert summarize.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "### ops.json (op level)" in text and "#### conv_bn_act" in text and "#### multires_fuse" in text
    # One multires_fuse row, recomputed here from the raw stats: eager median, fused median, their ratio.
    cells = {b["params"]["impl"]: b for b in data["benchmarks"] if b["group"].startswith("multires_fuse")
             and b["group"] == next(g["group"] for g in data["benchmarks"] if g["group"].startswith("multires_fuse"))}
    eager, fused = cells["eager upsample+add+ReLU"]["stats"], cells["fused"]["stats"]
    assert f"{fused['median'] * 1e6:.1f} [" in text
    assert f"({eager['median'] / fused['median']:.2f}x)" in text


@pytest.mark.parametrize("script, args", [
    ("cpu_overhead.py", ["--model", "hrnet_w18_small", "--input-size", "64x64", "--repeats", "1", "--threads", "1"]),
    ("cpu_page_faults.py", ["--model", "hrnet_w18_small", "--input-size", "64x64", "--batch", "1", "--calls", "2",
                            "--threads", "1"]),
    ("cpu_conv_call_cost.py", ["--calls", "3", "--threads", "1"]),
    ("cpu_forward_routes.py", ["--model", "hrnet_w18_small", "--input-size", "64x64", "--threads", "1",
                               "--min-time", "0", "--no-compile"]),
])
def test_measurement_scripts_run_and_their_results_are_summarized(tmp_path, script, args):
    """Each CPU measurement script runs on tiny settings, records its command, and summarize.py lists it."""
    out = tmp_path / "result.json"
    # The settings a result records in front of its command: none but the one this test sets.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HRNET_FAST_", "ONEDNN_", "ATEN_CPU_CAPABILITY", "MALLOC_"))}
    setting = "HRNET_FAST_NO_REPLAY=1 " if script == "cpu_overhead.py" else ""
    if setting:
        env["HRNET_FAST_NO_REPLAY"] = "1"
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args, "--json", str(out)], capture_output=True,
                          text=True, cwd=ROOT, env=dict(env, PYTHONPATH=str(ROOT)), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["command"].startswith(f"{setting}python benchmarks/{script}")
    assert result["command"].endswith(f"--json {out}")
    if script == "cpu_overhead.py":
        assert result["wall_ms"] > 0 and 0 <= result["kernels_pct"] <= 100 and result["onednn_primitives"] > 0
        assert result["replay"] is False and result["replayed_calls"] == 0
    elif script == "cpu_forward_routes.py":
        rows = {r["route"]: r for r in result["rows"]}
        assert set(rows) == {"module path", "replayed"} and all(r["median_ms"] > 0 for r in rows.values())
        assert rows["replayed"]["max_abs_diff_vs_module_path"] == 0.0  # the same kernels, the same bits
    else:
        assert result["rows"] and all(v for row in result["rows"] for v in row.values() if not isinstance(v, int))
    summarize = _summarize_module()
    assert summarize.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "## Measurement scripts (benchmarks/*.py)" in text and f"`{setting}python benchmarks/{script}" in text
