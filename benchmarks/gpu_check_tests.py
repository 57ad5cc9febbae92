"""gpu_check stage 'tests': the curated GPU test subset (``gpu_check_test_list.CHUNKS``), chunk by chunk.

Each chunk is its own pytest process; ``WORKERS`` run at once (a chunk's time is mostly Triton compiling kernels
on one core, and the GPU has room for several processes). Every test's outcome is appended to a file as it ends
(``gpu_check_pytest_report``), and the stage's JSON is rewritten after each chunk: per chunk its status (passed,
failed, cut, skipped: budget), counts, the failing ids with their messages and the skip reasons. When the budget
runs out, running chunks are stopped and keep the outcomes they had; chunks not started are listed as skipped.
Triton's configs are not timed here (``HRNET_FAST_TUNING=off``): the tests check answers, and timing would only
spend the budget. Smoke mode: the same chunks on the CPU, where the ``gpu``-marked tests skip (which checks that
they import and that every id exists) and the torch backend's tests run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

from gpu_check_common import ROOT, SMOKE, stage_main
from gpu_check_pytest_report import REPORT_ENV
from gpu_check_test_list import CHUNKS

WORKERS = 2 if SMOKE else max(1, min(4, (os.cpu_count() or 1) // 4))
MIN_START_S = 4.0  # a chunk started with less left would be stopped before its pytest finished collecting
POLL_S = 0.2


def _outcomes(path: str):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def chunk_result(ids, report_path: str, rc, wall_s: float, output: str, stopped: bool):
    """The record of one chunk from its outcomes file and exit status."""
    outcomes = _outcomes(report_path)
    counts = Counter(o["outcome"] for o in outcomes)
    seen = {o["id"] for o in outcomes}
    failed = [{"id": o["id"], "when": o["when"], "message": o["message"]} for o in outcomes
              if o["outcome"] in ("failed", "error")]
    skips = Counter(o["message"] for o in outcomes if o["outcome"] == "skipped")
    not_run = [i for i in ids if i not in seen]
    if stopped:
        status = "cut"
    elif failed or rc != 0:
        status = "failed"
    else:
        status = "passed"
    record = {"status": status, "ids": len(ids), "counts": dict(counts), "rc": rc, "wall_s": round(wall_s, 1),
              "failed": failed, "skip_reasons": dict(skips), "not_run": not_run}
    if status == "failed" and not failed:  # pytest itself failed (an unknown id, a collection error)
        record["output_tail"] = output[-3000:]
    return record


class Chunk:
    def __init__(self, name, ids, tmp):
        self.name, self.ids = name, ids
        self.report = os.path.join(tmp, f"{name}.jsonl")
        self.log = open(os.path.join(tmp, f"{name}.log"), "w+")
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-p", "gpu_check_pytest_report",
               *ids]
        # The plugin lives beside this program; the checkout's package is the one under test.
        path = [os.path.join(ROOT, "benchmarks"), ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), REPORT_ENV: self.report,
               "HRNET_FAST_TUNING": "off", "HRNET_FAST_TUNING_CACHE": "off",
               **({"OMP_NUM_THREADS": "1"} if SMOKE else {})}  # smoke: WORKERS processes on as many cores
        self.begin = time.perf_counter()
        # A session of its own: stopping the chunk stops whatever its tests started too.
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def result(self, stopped: bool):
        if stopped and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait()
        self.log.seek(0)
        output = self.log.read()
        self.log.close()
        sys.stdout.write(f"-- chunk {self.name}\n{output}")
        sys.stdout.flush()
        return chunk_result(self.ids, self.report, None if stopped else rc, time.perf_counter() - self.begin,
                            output, stopped)


def body(stage, args) -> None:
    rec = stage.record
    rec.update(workers=WORKERS, chunks={n: {"status": "pending", "ids": len(ids)} for n, ids in CHUNKS.items()})
    pending = list(CHUNKS.items())
    running = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            while pending or running:
                while pending and len(running) < WORKERS and stage.remaining() > MIN_START_S:
                    name, ids = pending.pop(0)
                    running[name] = Chunk(name, ids, tmp)
                    rec["chunks"][name]["status"] = "running"
                if not running:
                    break  # the budget left cannot start another chunk
                out_of_time = stage.remaining() <= 0
                for name in [n for n, c in running.items() if out_of_time or c.proc.poll() is not None]:
                    rec["chunks"][name] = running.pop(name).result(stopped=out_of_time)
                    stage.save()
                time.sleep(POLL_S)
        finally:  # the backstop's SIGTERM (or an error): every running chunk keeps what it finished
            for name, chunk in running.items():
                rec["chunks"][name] = chunk.result(stopped=True)
            for name, ids in pending:
                rec["chunks"][name] = {"status": "skipped: budget", "ids": len(ids)}
            summarise(stage)


def summarise(stage) -> None:
    chunks = stage.record["chunks"]
    totals = Counter()
    for c in chunks.values():
        totals.update(c.get("counts", {}))
    stage.record["counts"] = dict(totals)
    for name, c in chunks.items():
        if c["status"] == "failed":
            stage.fail(f"chunk {name}: {len(c['failed'])} failed of {c['ids']} (rc {c['rc']})")
    cut = [n for n, c in chunks.items() if c["status"] == "cut" or c["status"].startswith("skipped")]
    if cut:
        stage.cut(f"the budget stopped or did not reach chunk(s) {', '.join(cut)}")
    stage.save()


if __name__ == "__main__":
    sys.exit(stage_main("tests", body))
