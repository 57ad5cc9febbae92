"""Static facts about the CUDA kernels (csrc/cuda/*.cu), gated without a GPU: every kernel compiles for sm_90 with
0 bytes of register spills. ptxas reports registers, stack frame and spills per kernel (``-Xptxas -v``); a
device-only compile (``-cubin``) takes seconds per file, since no host code is compiled."""
from __future__ import annotations

import os
import re
import subprocess
import sysconfig
from typing import Dict, NamedTuple

import pytest

from hrnet_fast.ops import extension

pytestmark = pytest.mark.static_gpu

ARCH = "sm_90"


class KernelUsage(NamedTuple):
    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int


_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(output: str) -> Dict[str, KernelUsage]:
    """Per kernel (mangled name): what ``ptxas -v`` reported for it."""
    usage: Dict[str, KernelUsage] = {}
    name = frame = None
    for line in output.splitlines():
        if m := _ENTRY.search(line):
            name, frame = m.group(1), None
        elif (m := _FRAME.search(line)) and name:
            frame = tuple(int(g) for g in m.groups())
        elif (m := _REGS.search(line)) and name and frame:
            usage[name] = KernelUsage(int(m.group(1)), *frame)
            name = frame = None
    return usage


def test_parse_ptxas_reads_each_kernel():
    out = """ptxas info    : Compiling entry function '_Z1kILi2EEvv' for 'sm_90'
ptxas info    : Function properties for _Z1kILi2EEvv
    8 bytes stack frame, 12 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers
ptxas info    : Compiling entry function '_Z1kILi4EEvv' for 'sm_90'
ptxas info    : Function properties for _Z1kILi4EEvv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers"""
    assert parse_ptxas(out) == {"_Z1kILi2EEvv": KernelUsage(255, 8, 12, 4), "_Z1kILi4EEvv": KernelUsage(40, 0, 0, 0)}


def compile_sm90(tmp_path) -> Dict[str, Dict[str, KernelUsage]]:
    """Per .cu source: its kernels' usage, from a device-only nvcc compile with the extension's own flags."""
    toolkit = extension.find_cuda_home()
    if toolkit is None:
        pytest.skip("no CUDA toolkit (nvcc and its headers) on this machine")
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths
    cfg = extension.build_config(with_cuda=True)
    includes = include_paths() + cfg["include_dirs"] + [sysconfig.get_paths()["include"]]
    sources = [s for s in cfg["sources"] if s.endswith(".cu")]
    assert sources, "no CUDA sources found under csrc/"
    jobs = {}
    for src in sources:
        cmd = [os.path.join(toolkit, "bin", "nvcc"), "-cubin", f"-arch={ARCH}", "-Xptxas", "-v", "-std=c++17",
               *COMMON_NVCC_FLAGS, *cfg["nvcc"], *(f"-I{p}" for p in includes), src,
               "-o", str(tmp_path / (os.path.basename(src) + ".cubin"))]
        jobs[src] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    usage = {}
    for src, proc in jobs.items():
        output = proc.communicate()[0]
        assert proc.returncode == 0, f"nvcc failed on {src}:\n{output[-4000:]}"
        usage[src] = parse_ptxas(output)
        with open(src) as f:
            defines_kernels = "__global__" in f.read()
        assert bool(usage[src]) == defines_kernels, f"ptxas reported {len(usage[src])} kernels for {src}"
    return usage


def test_cuda_kernels_compile_for_sm90_without_spills(tmp_path):
    usage = compile_sm90(tmp_path)
    rows = [(os.path.basename(src), name, u) for src, kernels in usage.items() for name, u in kernels.items()]
    assert rows, "no CUDA kernels found"
    for src, name, u in rows:
        print(f"{ARCH} {src} {name}: {u.registers} registers, {u.stack_bytes} B stack, "
              f"{u.spill_store_bytes} B spill stores, {u.spill_load_bytes} B spill loads")
    spilling = [(src, name, u) for src, name, u in rows if u.spill_store_bytes or u.spill_load_bytes]
    assert not spilling, f"kernels spilling registers on {ARCH}: {spilling}"
