"""benchmarks/gpu_check.sh in smoke mode (no GPU here, or HRNET_FAST_GPU_CHECK_SMOKE=1): every stage runs on the
CPU at tiny sizes and leaves its JSON, and OUTDIR stays within what a device lease brings back (8 files, no
subfolders). The figures are not checked, only that each stage ran and recorded them with its environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("build", "tests", "sanitizer", "latency", "ops")


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHON=sys.executable, HRNET_FAST_GPU_CHECK_SMOKE="1")
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert done.returncode == 0, f"gpu_check.sh exited {done.returncode}\n{done.stdout[-2000:]}\n{log[-6000:]}"
    return out


def test_outdir_fits_a_lease(outdir):
    files = sorted(p.name for p in outdir.iterdir())
    assert all((outdir / f).is_file() for f in files)
    assert len(files) <= 8
    assert set(files) == {f"{s}.json" for s in STAGES} | {"summary.json", "gpu_check.log"}


@pytest.mark.parametrize("stage", STAGES)
def test_stage_record(outdir, stage):
    rec = json.loads((outdir / f"{stage}.json").read_text())
    assert rec["status"] == "ok" and rec["smoke"] is True, rec.get("error")
    env = rec["environment"]
    assert env["torch"] and env["device"] and "command" in rec and rec["wall_s"] <= rec["budget_s"]


def test_stages_carry_their_figures(outdir):
    load = lambda s: json.loads((outdir / f"{s}.json").read_text())  # noqa: E731
    assert load("build")["backends"]["cpu"]["live"]
    assert load("tests")["counts"]["tests"] > 0
    bench = load("latency")["runs"]["eager_and_converted"]["bench"]
    assert {r["implementation"] for r in bench["results"]} == {"reference", "converted", "channels_last"}
    ops = load("ops")
    assert ops["copy"]["GBps"] > 0
    conv = ops["conv_bn_act"]
    assert len(conv) > 20 and all({"median_ms", "p20_ms", "p80_ms"} <= set(r["impls"]["cpu"]) for r in conv)
    assert all(r["impls"]["cpu"]["GBps"] > 0 for r in ops["multires_fuse"])
    summary = json.loads((outdir / "summary.json").read_text())
    assert {s: summary[s]["status"] for s in STAGES} == {s: "ok" for s in STAGES}
