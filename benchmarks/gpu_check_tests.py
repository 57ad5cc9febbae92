"""gpu_check stage 'tests': the ``gpu``-marked tests (on the GPU they run; in smoke mode they are collected and
skip, which checks that they import). Records pass/fail/skip counts and the failing test ids."""
from __future__ import annotations

import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ET

from gpu_check_common import SMOKE, remaining, run_command, stage_main

SMOKE_FILES = ["tests/test_conv_bn_act.py", "tests/test_multires_fuse.py"]


def body(args):
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "junit.xml")
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-x" if SMOKE else "-rf",
               f"--junitxml={junit}"] + (SMOKE_FILES if SMOKE else ["tests/"])
        run = run_command(cmd, remaining(args))
        counts, failed = {}, []
        if os.path.exists(junit):
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            for case in suite.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    failed.append(f"{case.get('classname')}::{case.get('name')}")
    summary = re.findall(r"=+ (.*) in [\d.]+s", run.get("output_tail", ""))
    out = {"pytest": run, "counts": counts, "failed": failed, "summary": summary[-1] if summary else None}
    if run.get("rc") not in (0, 5) or failed or not counts.get("tests"):  # 5: nothing collected
        out["status_override"] = "failed"
    return out


if __name__ == "__main__":
    sys.exit(stage_main("tests", body))
