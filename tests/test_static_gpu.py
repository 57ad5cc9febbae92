"""Static GPU gates, no GPU needed: the Triton kernels compiled for sm_90 exactly as HRNet-W18's launches would
compile them (tests/gpu_static.py), checked for register spills and for vectorised operand loads.

The default run compiles the HRNet-branch conv shapes (fp16, bf16 on a sample) and every fusion call (fp16), each
with every config its launcher can pick; ``HRNET_FAST_STATIC_GPU=full`` compiles every conv shape of the forward in
fp16 and bf16 and reports the int64-index variants too (not gated: they only run on tensors past 2**31 elements).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gpu_static import global_loads

pytestmark = pytest.mark.static_gpu

FULL = os.environ.get("HRNET_FAST_STATIC_GPU", "") == "full"
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """One compile run for the module (a subprocess: the kernels must not be interpreted)."""
    out = tmp_path_factory.mktemp("static_gpu") / "records.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, os.path.join(HERE, "gpu_static.py"), "--json", str(out)] + (["--full"] if FULL else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"compiling for sm_90 failed:\n{done.stderr[-4000:]}"
    print(done.stdout)  # the per-shape table, shown with -s
    return json.loads(out.read_text())


def gated(records, kernel):
    return [r for r in records if r["kernel"] == kernel and not r["int64"]]


def test_every_w18_call_was_compiled(compiled):
    """The gates below see W18's calls: every branch width, both kernels, several configs per conv shape."""
    convs = gated(compiled["records"], "conv_bn_act")
    fuses = gated(compiled["records"], "multires_fuse")
    shapes = {r["shape"] for r in convs if r["dtype"] == "fp16"}
    assert {s.split()[0] for s in shapes} >= {"18->18", "36->36", "72->72", "144->144", "18->36", "144->18"}
    assert len(shapes) >= 20 and len(convs) > 2 * len(shapes)
    assert {r["dtype"] for r in convs} == {"fp16", "bf16", "fp32"}
    assert len({r["shape"] for r in fuses}) >= 8


@pytest.mark.parametrize("kernel", ("conv_bn_act", "multires_fuse"))
def test_no_register_spills(compiled, kernel):
    """fp16 and bf16 (fp32 is compiled, to know it builds, but its IEEE dots are not what the gate is about)."""
    spilling = [f"{r['dtype']} {r['shape']} {r['config']}: {r['registers']} registers, {r['spill_bytes']} B spilled"
                for r in gated(compiled["records"], kernel) if r["spill_bytes"] and r["dtype"] != "fp32"]
    assert not spilling, "configs that spill on sm_90:\n" + "\n".join(spilling)


def test_conv_operand_loads_are_vectorised(compiled):
    """Every W18 fp16 conv (channels_last, as converted models run) reads its operands at least two values at a
    time (cp.async, or ld.global of 4+ bytes where a single-step K loop leaves nothing to pipeline), never element
    by element. An odd channel count (the 3-channel stem, in the full run) has 2-byte-aligned pixels: exempt."""
    records = [r for r in gated(compiled["records"], "conv_bn_act")
               if r["dtype"] == "fp16" and r["operand_loads"] and r["cin"] % 2 == 0]
    assert records
    scalar = [f"{r['shape']}: {r['operand_loads']}" for r in records if "ld2" in r["operand_loads"]]
    assert not scalar, "conv shapes with element-wise operand loads:\n" + "\n".join(scalar)
    assert all(any(k.startswith("cp.async") for k in r["operand_loads"]) for r in records if r["cin"] in (36, 72))


def test_ptx_load_parser():
    """The load classifier the gates rely on, on PTX lines as Triton emits them."""
    ptx = """
	@%p1 ld.global.b16 { %rs1 }, [ %rd1 + 0 ];
	ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd2 + 0 ];
	@%p2 ld.global.nc.v2.b32 { %r5, %r6 }, [ %rd3 + 0 ];
	cp.async.ca.shared.global [ %r30 + 0 ], [ %rd4 + 0 ], 0x4, %r31;
	cp.async.cg.shared.global [ %r46 + 0 ], [ %rd12 + 0 ], 0x10, %r47;
	cp.async.commit_group;
	st.global.b16 [ %rd5 + 0 ], { %rs2 };
"""
    assert global_loads(ptx) == {"ld2": 1, "ld16": 1, "ld8": 1, "cp.async4": 1, "cp.async16": 1}


# Budgets for a first W18 forward at 224x224 (batch 1, fp16): 156 conv and 54 fusion variants before sizes stopped
# being specialised and half-wave shapes stopped being tuned; 91 and 39 after.
MAX_FIRST_FORWARD_VARIANTS = {"conv_bn_act": 100, "multires_fuse": 45}


def test_first_forward_compiles_a_bounded_number_of_variants():
    """Distinct compiled variants (specialisation, constexprs, options) over every launch of a first forward,
    tuning candidates included: what bounds its compile time."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, os.path.join(HERE, "gpu_static.py"), "--count"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    counts = json.loads(done.stdout)
    assert counts["conv_calls"] >= 50 and counts["fuse_calls"] >= 8  # the whole forward was seen
    over = {k: counts[k] for k, budget in MAX_FIRST_FORWARD_VARIANTS.items() if counts[k] > budget}
    assert not over, f"first-forward variants over budget {MAX_FIRST_FORWARD_VARIANTS}: {over}"
