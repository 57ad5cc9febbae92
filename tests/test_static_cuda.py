"""Static facts about the CUDA kernels (csrc/cuda/*.cu), gated without a GPU: every kernel compiles for sm_90,
with the flags torch's own extension build uses, with 0 bytes of register spills (tests/static_cuda.py does the
compiling; .ci/newest_torch_headers runs the same compile against the newest torch on PyPI)."""
from __future__ import annotations

import os
import types
import zipfile

import pytest
import torch

from hrnet_fast.ops import extension
from static_cuda import (KernelUsage, compile_sm90, extract_torch_headers, load_cpp_extension, parse_ptxas,
                         report)

pytestmark = pytest.mark.static_gpu

TORCH_DIR = os.path.dirname(torch.__file__)


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


def test_report_names_only_spilling_kernels(capsys):
    usage = {"/x/a.cu": {"k1": KernelUsage(40, 0, 0, 0), "k2": KernelUsage(255, 8, 0, 4)}}
    assert report(usage) == ["a.cu k2: KernelUsage(registers=255, stack_bytes=8, spill_store_bytes=0, "
                             "spill_load_bytes=4)"]
    assert "a.cu k1: 40 registers" in capsys.readouterr().out


NINJA = """ninja_required_version = 1.3
nvcc = /usr/local/cuda/bin/nvcc
cflags = -DTORCH_EXTENSION_NAME=_C -fPIC -std=c++20
cuda_cflags = -DTORCH_EXTENSION_NAME=_C -isystem /t/include --expt-relaxed-constexpr -gencode=arch=compute_90,code=sm_90 --compiler-options '-fPIC' -O3 -std=c++20
cuda_post_cflags = 
rule cuda_compile
  command = $nvcc -MD -MF $out.d $cuda_cflags -c $in -o $out $cuda_post_cflags
"""


def test_ninja_variable_reads_one_assignment():
    assert extension.ninja_variable(NINJA, "cuda_cflags") == [
        "-DTORCH_EXTENSION_NAME=_C", "-isystem", "/t/include", "--expt-relaxed-constexpr",
        "-gencode=arch=compute_90,code=sm_90", "--compiler-options", "-fPIC", "-O3", "-std=c++20"]
    assert extension.ninja_variable(NINJA, "cuda_post_cflags") == []
    assert extension.ninja_variable(NINJA, "sycl_cflags") == []


def _fake_cpp_extension(ninja_text, seen):
    def write(path, name, sources, cflags, cuda_cflags, sycl_cflags, ldflags, includes, with_cuda, with_sycl,
              standalone):
        seen.update(arch=os.environ.get("TORCH_CUDA_ARCH_LIST"), sources=sources, cuda_cflags=cuda_cflags,
                    includes=includes, with_cuda=with_cuda)
        with open(path, "w") as f:
            f.write(ninja_text)
    return types.SimpleNamespace(_write_ninja_file_to_build_library=write)


def test_nvcc_flags_come_from_the_ninja_file_torch_writes(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    seen = {}
    flags = extension.nvcc_flags(_fake_cpp_extension(NINJA, seen), "9.0")
    assert flags == extension.ninja_variable(NINJA, "cuda_cflags")
    cfg = extension.build_config(with_cuda=True)
    assert seen["arch"] == "9.0" and seen["with_cuda"] is True
    assert seen["cuda_cflags"] == cfg["nvcc"] and seen["includes"] == cfg["include_dirs"]
    assert seen["sources"] and all(s.endswith(".cu") for s in seen["sources"])
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0+PTX"  # restored


def test_nvcc_flags_refuse_a_ninja_file_without_a_standard(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    without_std = NINJA.replace(" -std=c++20", "")
    with pytest.raises(RuntimeError, match="no -std= flag"):
        extension.nvcc_flags(_fake_cpp_extension(without_std, {}), "9.0")
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ


def _toolkit():
    toolkit = extension.find_cuda_home()
    if toolkit is None:
        pytest.skip("no CUDA toolkit (nvcc and its headers) on this machine")
    return toolkit


def test_a_copied_cpp_extension_looks_for_headers_in_its_own_torch_dir(tmp_path):
    toolkit = _toolkit()
    utils = tmp_path / "torch" / "utils"
    utils.mkdir(parents=True)
    (utils / "cpp_extension.py").write_text(open(os.path.join(TORCH_DIR, "utils", "cpp_extension.py")).read())
    copy = load_cpp_extension(str(tmp_path / "torch"), toolkit)
    include = tmp_path / "torch" / "include"
    assert copy.include_paths("cuda")[:2] == [str(include), str(include / "torch" / "csrc" / "api" / "include")]
    assert copy.CUDA_HOME == toolkit


def test_nvcc_flags_of_the_installed_torch_are_its_build_flags():
    toolkit = _toolkit()
    cpp_extension = load_cpp_extension(TORCH_DIR, toolkit)
    flags = extension.nvcc_flags(cpp_extension, "9.0")
    assert len([f for f in flags if f.startswith("-std=")]) == 1
    assert set(cpp_extension.COMMON_NVCC_FLAGS) <= set(flags)
    assert "-gencode=arch=compute_90,code=sm_90" in flags
    assert set(extension.build_config(with_cuda=True)["nvcc"]) <= set(flags)
    assert os.path.join(TORCH_DIR, "include") in flags and os.path.join(toolkit, "include") in flags


def test_extract_torch_headers_takes_only_headers_and_build_helpers(tmp_path):
    wheel = tmp_path / "torch-9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("torch/include/torch/extension.h", "// header")
        z.writestr("torch/include/c10/cuda/impl/cuda_cmake_macros.h", "// generated")
        z.writestr("torch/utils/cpp_extension.py", "# helpers")
        z.writestr("torch/lib/libtorch_cuda.so", b"\0" * 64)
    torch_dir = extract_torch_headers(str(wheel), str(tmp_path / "out"))
    found = sorted(os.path.relpath(os.path.join(d, f), torch_dir) for d, _, fs in os.walk(torch_dir) for f in fs)
    assert found == ["include/c10/cuda/impl/cuda_cmake_macros.h", "include/torch/extension.h",
                     "utils/cpp_extension.py"]


@pytest.mark.parametrize("members, problem", [
    (["torch/utils/cpp_extension.py"], "no torch/include headers"),
    (["torch/include/torch/extension.h", "torch/utils/cpp_extension.py"], "CPU-only torch"),
])
def test_extract_torch_headers_refuses_a_wheel_it_cannot_compile_against(tmp_path, members, problem):
    wheel = tmp_path / "torch-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name in members:
            z.writestr(name, "")
    with pytest.raises(RuntimeError, match=problem):
        extract_torch_headers(str(wheel), str(tmp_path / "out"))


def test_cuda_kernels_compile_for_sm90_without_spills(tmp_path):
    toolkit = _toolkit()
    usage = compile_sm90(str(tmp_path), load_cpp_extension(TORCH_DIR, toolkit), toolkit)
    assert any(usage.values()), "no CUDA kernels found"
    spilling = report(usage)
    assert not spilling, f"kernels spilling registers on sm_90: {spilling}"
