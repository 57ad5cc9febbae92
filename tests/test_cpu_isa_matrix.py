"""The CPU conv paths under oneDNN's and ATen's instruction-set caps, so that a test run on one CPU also runs
the kernels another CPU picks.

oneDNN reads ``ONEDNN_MAX_CPU_ISA`` and ATen ``ATEN_CPU_CAPABILITY`` once, at process start, so each cap runs in a
child process: first a probe that the cap took effect, then the CPU conv tests (every path, those of other CPUs
included, whose decisions must not depend on this one's: the exact reduced-precision epilogue on every entry
point, the float64-truth grid in every dtype and layout on its shapes below 50x50, the float16 overflow case, the
packing checks), then the tests of the kept oneDNN primitives converted models run on. The uncapped run is this
process's own run of the same tests.

* avx2: what an AVX2-only CPU runs. oneDNN's AVX2 kernels; neither float16 nor bfloat16 is native, so both
  compute in float32. ``ATEN_CPU_CAPABILITY=avx2`` too (safe on any CPU with AVX2, which both CI CPUs have).
* avx512_core: AVX512 without AVX512-FP16, AVX512-BF16 or AMX (a Skylake-class server): bfloat16 native by
  conversion where the CPU has AVX512, float16 in float32. ATen's level is left alone (asking it for avx512 on a
  CPU without AVX512 would run instructions the CPU lacks; oneDNN's cap only ever lowers).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CAPS = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "avx512_core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}
TESTS = ["tests/test_cpu_conv_paths.py", "tests/test_cpu_conv.py",
         "tests/test_ops_special_values.py::test_conv_bn_act_fp16_accumulates_in_fp32"]
SELECTION = "not 56x56 and not 64x48"
# Converted models' CPU convolutions (the kept oneDNN primitives read the cap too) and what compares them.
CONVERTED_TESTS = ["tests/test_onednn_conv.py", "tests/test_residual_in_place.py", "tests/test_replay.py",
                   "tests/test_parallel_branches.py", "tests/test_kept_conv_layouts.py",
                   "tests/test_convert.py::test_torch_compile_and_export"]
PROBE = "import json; from hrnet_fast import cpu_features; print(json.dumps(cpu_features.native_dtypes()))"


def child(cap: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                                                            "ATEN_CPU_CAPABILITY")}
    env.update(CAPS[cap])
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("cap", CAPS)
def test_cpu_conv_under_isa_cap(cap):
    probe = child(cap, "-c", PROBE)
    assert probe.returncode == 0, probe.stderr[-3000:]
    native = json.loads(probe.stdout.strip().splitlines()[-1])
    assert native["onednn_isa_cap"] == CAPS[cap]["ONEDNN_MAX_CPU_ISA"]
    assert native["float16"] is False, native  # AVX512-FP16 and AVX-NE-CONVERT are above both caps
    if cap == "avx2":
        assert native["bfloat16"] is False and native["capability"] == "AVX2", native
    for args in (("-k", SELECTION, *TESTS), CONVERTED_TESTS):
        run = child(cap, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args)
        assert run.returncode == 0, f"under {CAPS[cap]}:\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
        assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]
