"""Static GPU gate for the segmentation ops' Triton kernels, no GPU needed: every variant a Cityscapes-sized call
launches compiles for sm_90 (tests/seg_gpu_static.py) without register spills."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.static_gpu

HERE = os.path.dirname(os.path.abspath(__file__))


def test_seg_kernels_compile_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, os.path.join(HERE, "seg_gpu_static.py")], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"compiling for sm_90 failed:\n{done.stderr[-4000:]}"
    records = json.loads(done.stdout.strip().splitlines()[-1])
    assert {r["kernel"] for r in records} == {"seg_normalize", "resize_argmax"} and len(records) == 15
    spilling = [r for r in records if r["spill_bytes"]]
    assert not spilling, f"variants that spill on sm_90: {spilling}"
