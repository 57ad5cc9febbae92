"""A pytest plugin for the GPU check's tests stage: appends one JSON line per test outcome to the file named by
``$HRNET_FAST_GPU_CHECK_REPORT`` as soon as the test ends, so a pytest process killed by the stage's budget
still leaves the outcomes of the tests it finished.

    HRNET_FAST_GPU_CHECK_REPORT=out.jsonl python -m pytest -p gpu_check_pytest_report tests/...
"""
from __future__ import annotations

import json
import os

REPORT_ENV = "HRNET_FAST_GPU_CHECK_REPORT"


def _append(entry) -> None:
    with open(os.environ[REPORT_ENV], "a") as f:
        f.write(json.dumps(entry) + "\n")


def _message(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])  # (file, line, reason)
    return (report.longreprtext or "")[-1500:]


def pytest_runtest_logreport(report):
    # The call's outcome; a setup that failed or skipped (the test never ran); a teardown that failed.
    if report.when == "call" or (report.when == "setup" and not report.passed) or \
            (report.when == "teardown" and report.failed):
        outcome = "error" if report.failed and report.when != "call" else report.outcome
        _append({"id": report.nodeid, "when": report.when, "outcome": outcome,
                 "duration_s": round(report.duration, 2), "message": "" if report.passed else _message(report)})


def pytest_collectreport(report):
    if report.failed:
        _append({"id": report.nodeid, "when": "collect", "outcome": "error", "duration_s": 0.0,
                 "message": (report.longreprtext or "")[-1500:]})
