"""benchmarks/gpu_check.sh in smoke mode (no GPU here, or HRNET_FAST_GPU_CHECK_SMOKE=1): every stage runs on the
CPU at tiny sizes with its budget scaled and leaves its JSON, and OUTDIR stays within what a device lease brings
back (8 files, no subfolders). Also: the budgets fit the lease, --stage reruns only the named stages, a stage cut
by its budget (or by the backstop's SIGTERM) leaves a partial JSON saying so, a failing implementation in the
measure stage is recorded rather than fatal, and every test id of the GPU subset exists. The figures themselves
are not checked (smoke figures mean nothing), only that each stage recorded them."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from gpu_check_plan import (DEFAULT_STAGES, GRACE_S, KILL_AFTER_S, SCALE_ENV, SUMMARY_S, TOTAL_S,  # noqa: E402
                            BUDGETS, parse_stages, schedule, worst_case_s)
from gpu_check_test_list import CHUNKS, all_ids  # noqa: E402

STAGES = tuple(DEFAULT_STAGES)


# The full smoke run's budget factor: generous, so a CI machine shared with other jobs does not cut a stage
# (alone on 2 cores the run takes about two minutes whatever the factor; the budgets only bound it).
FULL_RUN_SCALE = "3"


def smoke_env(scale=None):
    env = dict(os.environ, PYTHON=sys.executable, HRNET_FAST_GPU_CHECK_SMOKE="1")
    if scale is not None:
        env[SCALE_ENV] = scale
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join([str(BENCHMARKS), str(ROOT)])
    return env


def run_check(out, *extra, timeout=900):
    return subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), str(out), *extra],
                          env=smoke_env(FULL_RUN_SCALE), capture_output=True, text=True, timeout=timeout)


def load(out, stage):
    return json.loads((Path(out) / f"{stage}.json").read_text())


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    done = run_check(out)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert done.returncode == 0, f"gpu_check.sh exited {done.returncode}\n{done.stdout[-3000:]}\n{log[-8000:]}"
    return out


# -- the plan: budgets that fit the lease ------------------------------------------------------------------------

def test_budgets_fit_the_lease():
    rows = schedule(STAGES, smoke=False)
    longest = sum(timeout + kill for _, _, timeout, kill in rows) + SUMMARY_S
    assert longest == worst_case_s() <= TOTAL_S == 270
    assert all(timeout == budget + GRACE_S and kill == KILL_AFTER_S for _, budget, timeout, kill in rows)
    assert "measure" in STAGES and "latency" not in STAGES  # the optional stage runs only when named


def test_stage_names_are_checked():
    assert parse_stages("ops,build") == ["build", "ops"]  # the default order, whatever order they were named in
    with pytest.raises(ValueError, match="unknown stage.*nope.*choose from build, tests"):
        parse_stages("measure,nope")


def test_unknown_stage_is_refused(tmp_path):
    done = run_check(tmp_path, "--stage", "nope", timeout=120)
    assert done.returncode == 3 and "unknown stage(s) nope" in done.stderr
    assert list(tmp_path.iterdir()) == []


# -- the GPU test subset -----------------------------------------------------------------------------------------

def test_every_listed_test_id_is_collected():
    """A renamed or removed test fails here, on the CPU, rather than in the rare GPU run."""
    ids = all_ids()
    assert len(ids) == len(set(ids)), "an id is listed twice"
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ids],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    collected = {line.strip() for line in done.stdout.splitlines() if "::" in line}
    missing = [i for i in ids if i not in collected]
    assert done.returncode == 0 and not missing, f"not collected: {missing}\n{done.stdout[-2000:]}{done.stderr}"


@pytest.mark.parametrize("op", ["conv_bn_act", "multires_fuse"])
def test_subset_covers_every_backend_dtype_and_layout(op):
    ids = [i for i in all_ids() if f"test_{op}.py::" in i]
    for backend in ("triton", "cuda", "torch"):
        for dtype in ("torch.float32", "torch.float16", "torch.bfloat16"):
            for layout in ("nchw", "channels_last"):
                assert any(f"[{backend}-" in i and f"-{dtype}" in i and f"-{layout}-" in i for i in ids), \
                    (op, backend, dtype, layout)


# -- the smoke run -----------------------------------------------------------------------------------------------

def test_outdir_fits_a_lease(outdir):
    files = sorted(p.name for p in outdir.iterdir())
    assert all((outdir / f).is_file() for f in files)
    assert len(files) <= 8
    assert set(files) == {f"{s}.json" for s in STAGES} | {"summary.json", "gpu_check.log"}


def test_budgets_come_from_the_plan(outdir):
    log = (outdir / "gpu_check.log").read_text()
    for stage in STAGES:
        assert f"stage {stage} (budget {round(BUDGETS[stage] * float(FULL_RUN_SCALE))} s)" in log


@pytest.mark.parametrize("stage", STAGES)
def test_stage_record(outdir, stage):
    rec = load(outdir, stage)
    assert rec["status"] == "ok" and rec["smoke"] is True, (rec.get("failures"), rec.get("cut"))
    env = rec["environment"]
    assert env["torch"] and env["device"] and "command" in rec and rec["wall_s"] <= rec["budget_s"]


def test_stages_carry_their_figures(outdir):
    assert load(outdir, "build")["backends"]["cpu"]["live"]
    tests = load(outdir, "tests")
    assert set(tests["chunks"]) == set(CHUNKS)
    assert all(c["status"] == "passed" and c["not_run"] == [] for c in tests["chunks"].values())
    assert sum(tests["counts"].values()) == len(all_ids()) and tests["counts"]["passed"] > 0  # the torch backend's
    assert load(outdir, "sanitizer")["forwards"][0]["relative_error"] < 1e-3
    ops = load(outdir, "ops")
    assert ops["copy"]["GBps"] > 0
    timed = [r for r in ops["conv_bn_act"] if "impls" in r]
    assert timed and all({"median_ms", "p20_ms", "p80_ms"} <= set(r["impls"]["cpu"]) for r in timed)


def test_measure_records_every_implementation(outdir):
    measure = load(outdir, "measure")
    cells = list(measure["cells"].values())
    assert cells and all("impls" in c for c in cells)
    for c in cells:
        assert set(c["impls"]) == set(measure["implementations"])
        for name, impl in c["impls"].items():
            if impl["status"] == "ok":
                assert {"median_ms", "p20_ms", "p80_ms", "first_call_s", "relative_error", "cpu_ops"} <= set(impl)
                assert impl["p20_ms"] <= impl["median_ms"] <= impl["p80_ms"]
            else:
                assert impl["status"].startswith("skipped: "), (name, impl)
        assert c["impls"]["converted_cuda"]["relative_error"] <= c["error_bound"]
    assert cells[0]["impls"]["compile_max_autotune"]["status"] == "ok"  # the first cell compiles
    assert cells[-1]["impls"]["compile_max_autotune"]["status"].startswith("skipped: ")  # and says why not later


def test_summary_covers_every_stage(outdir):
    summary = json.loads((outdir / "summary.json").read_text())
    assert {s: row["status"] for s, row in summary["stages"].items()} == {s: "ok" for s in STAGES}
    assert all(row["exit"] == 0 for row in summary["stages"].values())
    rows = summary["measure"]
    assert [r["cell"] for r in rows] == list(load(outdir, "measure")["cells"])
    for r in rows:  # no CUDA graph in smoke mode: eager NCHW is the baseline, its own ratio 1
        assert r["baseline"] == "eager_nchw" and r["ratio"]["eager_nchw"] == pytest.approx(1.0)


def test_stage_option_reruns_only_the_named_stages(outdir, tmp_path):
    """--stage ops,latency: ops.json rewritten, latency.json (the optional stage) added, the other stages' files
    untouched, the log appended to, and the summary covering every stage in OUTDIR; still at most 8 files."""
    out = tmp_path / "rerun"
    shutil.copytree(outdir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    done = run_check(out, "--stage", "ops,latency")
    assert done.returncode == 0, done.stdout[-3000:]
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(after) == set(before) | {"latency.json"} and len(after) <= 8
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"ops.json", "summary.json", "gpu_check.log"}
    assert load(out, "ops")["created"] >= load(outdir, "ops")["created"]
    assert load(out, "latency")["runs"]["eager_and_converted"]["rc"] == 0
    log, old_log = after["gpu_check.log"].decode(), before["gpu_check.log"].decode()
    assert log.startswith(old_log) and "stage tests" not in log[len(old_log):]
    summary = json.loads(after["summary.json"])
    assert set(summary["stages"]) == set(STAGES) | {"latency"}  # the stages not rerun keep their rows
    assert all(row["status"] == "ok" for row in summary["stages"].values())


# -- cut stages --------------------------------------------------------------------------------------------------

def run_stage(out, stage, budget):
    return subprocess.run([sys.executable, str(BENCHMARKS / f"gpu_check_{stage}.py"), str(out), "--budget",
                           str(budget)], env=smoke_env(), capture_output=True, text=True, timeout=300)


def test_tests_stage_cut_by_its_budget_keeps_what_it_did(tmp_path):
    done = run_stage(tmp_path, "tests", 9)
    rec = load(tmp_path, "tests")
    assert done.returncode == 2 and rec["status"] == "cut", (done.returncode, rec.get("failures"))
    statuses = [c["status"] for c in rec["chunks"].values()]
    assert "skipped: budget" in statuses and set(statuses) <= {"passed", "cut", "skipped: budget"}
    assert "the budget stopped or did not reach chunk(s)" in rec["cut"]
    assert rec["wall_s"] <= 9 + 2


def test_measure_stage_cut_by_its_budget_lists_the_cells_not_reached(tmp_path):
    done = run_stage(tmp_path, "measure", 25)  # room for the first cell (without torch.compile), not the rest
    rec = load(tmp_path, "measure")
    assert done.returncode == 2 and rec["status"] == "cut", (done.returncode, rec.get("failures"))
    cells = list(rec["cells"].values())
    assert "impls" in cells[0] and cells[0]["impls"]["compile_max_autotune"]["status"].startswith("skipped: budget")
    assert cells[-1] == {"status": "skipped: budget"}
    assert "cells not reached" in rec["cut"]


def test_backstop_sigterm_leaves_a_record_saying_cut(tmp_path):
    proc = subprocess.Popen([sys.executable, str(BENCHMARKS / "gpu_check_measure.py"), str(tmp_path), "--budget",
                             "200"], env=smoke_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = tmp_path / "measure.json"
    deadline = time.time() + 120
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert path.exists() and load(tmp_path, "measure")["status"] == "running"
    time.sleep(2)  # into the first cell
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 2
    rec = load(tmp_path, "measure")
    assert rec["status"] == "cut" and "SIGTERM" in rec["cut"]


# -- the measure stage's pieces, in process ---------------------------------------------------------------------

def test_a_failing_implementation_is_recorded_not_fatal(monkeypatch):
    import gpu_check_measure as measure
    from gpu_check_measure_impls import CapExceeded, eager_nchw

    def broken(model, dtype, x):
        raise RuntimeError("no kernel for this problem")

    def over_cap(model, dtype, x):
        def forward():
            raise CapExceeded("its first call passed its 1 s cap")
        return forward

    monkeypatch.setattr(measure, "BUILDERS", {"eager_nchw": eager_nchw, "broken": broken, "slow": over_cap})
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    cell = {"impls": {}}
    live = measure.build_impls(cell, model, torch.float32, x, ref, time.time() + 60, compile_why="")
    assert list(live) == ["eager_nchw"] and cell["impls"]["eager_nchw"]["relative_error"] == 0.0
    assert cell["impls"]["broken"]["status"] == "failed"
    assert cell["impls"]["broken"]["error"].startswith("RuntimeError: no kernel for this problem")
    assert cell["impls"]["slow"]["status"] == "cut" and "cap" in cell["impls"]["slow"]["error"]


def test_time_cap_interrupts_python_code():
    from gpu_check_measure_impls import CapExceeded, time_cap
    begin = time.perf_counter()
    with pytest.raises(CapExceeded, match="0 s cap"):
        with time_cap(0.2):
            while True:
                pass
    assert time.perf_counter() - begin < 5


def test_translation_units_are_read_from_ninja_status_lines():
    from gpu_check_build import translation_units
    out = ("running build_ext\n[1/2 11.280s] c++ -MMD -c -c /x/csrc/cpu/conv_bn_act.cpp -o a.o -O3\n"
           "[2/2 44.6s] /usr/local/cuda/bin/nvcc -c /x/csrc/cuda/multires_fuse.cu -o b.o\n")
    units = translation_units(out)
    assert [u["finished_s"] for u in units] == [11.28, 44.6]
    assert units[0]["source"].endswith("csrc/cpu/conv_bn_act.cpp") and units[1]["source"].endswith(".cu")
