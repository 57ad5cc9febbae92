"""The compiled extension hrnet_fast._C (csrc/): registration, the CPU multires_fuse kernel against the reference,
the C++ boundary checks, the CUDA sources compiling with nvcc, and (on a GPU) the CUDA kernels.

The native ops are called directly (torch.ops.hrnet_fast_C.*), under the public API's validation; the public API
on every live backend is covered by test_multires_fuse.py and test_conv_bn_act.py.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import sysconfig
from typing import List, Sequence, Tuple

import pytest
import torch

from hrnet_fast.ops import extension
from hrnet_fast.ops.reference import conv_bn_act_ref, multires_fuse_ref
from tolerance import assert_matches_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ("conv_bn_act", "multires_fuse")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.fixture(scope="module")
def native():
    """torch.ops.hrnet_fast_C, or a skip saying why the extension is not built."""
    loaded, why = extension.loaded()
    if not loaded:
        pytest.skip(why)
    return torch.ops.hrnet_fast_C


# --- import and registration ----------------------------------------------------------------------------------

def test_built_extension_imports():
    """A built hrnet_fast._C must import (a broken build fails here); no build at all is a skip."""
    built = [p for ext in ("so", "pyd") for p in glob.glob(os.path.join(ROOT, "hrnet_fast", f"_C*.{ext}"))]
    if not built:
        pytest.skip("hrnet_fast._C is not built (pip install --no-build-isolation -e .)")
    assert extension.loaded() == (True, "")


def test_registers_both_ops_with_cpu_kernels(native):
    for op in OPS:
        assert extension.has_kernel(op, "CPU") == (True, "")
        assert callable(extension.native(op))


def test_cuda_kernels_registered_when_the_toolchain_is_there(native):
    """setup.py compiles the CUDA kernels wherever a CUDA build of torch and nvcc exist, GPU or not."""
    toolkit, why = extension.cuda_toolkit()
    if toolkit is None:
        pytest.skip(f"no CUDA toolchain, so a CPU-only build is expected: {why}")
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"hrnet_fast_C::{op}", "CUDA"), op


def test_native_rejects_unknown_op():
    with pytest.raises(ValueError, match="no op 'bogus'"):
        extension.native("bogus")


# --- CPU multires_fuse against the reference -------------------------------------------------------------------

# (N, C, H, W, low-res factors, number of same-res inputs)
FUSE_CASES = (
    (0, 18, 8, 8, (2,), 1),                  # empty batch
    (1, 3, 7, 7, (1,), 0),                   # 7x7: only factor 1 divides it
    (3, 18, 13, 17, (1,), 2),                # odd, not square
    (1, 36, 64, 48, (2, 4, 8, 16), 4),       # 4 + 4 inputs, pose-like crop, several parallel tasks
    (3, 72, 24, 24, (2, 4, 8), 0),           # stage-4 style fusion into the highest resolution
    (2, 144, 8, 8, (8,), 3),                 # the low-res input is one pixel
    (1, 18, 26, 34, (2,), 1),                # odd low-res size (13x17)
    (2, 5, 40, 8, (2, 4, 8), 0),             # narrow rows: gathers cross rows
    (1, 18, 6, 4, (2,), 0),                  # rows of 4: 8 lanes span rows mapping to one low-res row
    (2, 1, 16, 16, (2,), 1),                 # one channel: NCHW and NHWC are the same memory
    (2, 18, 5, 3, (), 0),                    # x alone: a copy (or ReLU)
)
LAYOUTS = ("nchw", "channels_last", "strided")


def case_id(case) -> str:
    n, c, h, w, low_sizes, n_same = case
    low = ".".join(f"{s[0]}x{s[1]}" if isinstance(s, tuple) else str(s) for s in low_sizes)
    return f"{n}x{c}x{h}x{w}-up{low or 'none'}-same{n_same}"


def make(shape: Sequence[int], dtype: torch.dtype, layout: str, device: str = "cpu") -> torch.Tensor:
    """Random [N, C, H, W]: contiguous, channels_last, or a strided view with no dense layout."""
    n, c, h, w = shape
    if layout == "strided":
        return torch.randn(n, 2 * c, h + 1, 2 * w, device=device).to(dtype)[:, ::2, 1:, ::2]
    t = torch.randn(n, c, h, w, device=device).to(dtype)
    return t.to(memory_format=torch.channels_last) if layout == "channels_last" else t


def fuse_inputs(case, dtype, layout, device="cpu") -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
    """x, low_res, same_res of a case; low-res inputs given by their factors or, for bilinear cases, (h, w) sizes."""
    n, c, h, w, low_sizes, n_same = case
    x = make((n, c, h, w), dtype, layout, device)
    low_sizes = [size if isinstance(size, tuple) else (h // size, w // size) for size in low_sizes]
    low = [make((n, c, zh, zw), dtype, layout, device) for zh, zw in low_sizes]
    same = [make((n, c, h, w), dtype, layout, device) for _ in range(n_same)]
    return x, low, same


def rounded_once(x, low, same, relu) -> torch.Tensor:
    """The kernel's documented result: the reference summed in fp32 (same order), rounded once to x's dtype."""
    f32 = lambda ts: [t.float() for t in ts]  # noqa: E731
    return multires_fuse_ref(x.float(), f32(low), f32(same), relu=relu).to(x.dtype)


def expected_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


# Bilinear: (N, C, H, W, low-res sizes, number of same-res inputs)
BILINEAR_CASES = (
    (0, 18, 8, 8, ((4, 4),), 1),                         # empty batch
    (1, 3, 7, 7, ((7, 7), (3, 3), (1, 1)), 0),           # a size kept (copied), odd, one pixel
    (3, 18, 13, 17, ((7, 9), (13, 4)), 2),               # ragged, one dimension kept
    (1, 36, 64, 48, ((32, 24), (16, 12), (8, 6), (5, 3)), 4),  # 4 + 4 inputs, several parallel tasks
    (2, 5, 40, 8, ((20, 4), (9, 3)), 0),                 # narrow rows: pieces span many rows
    (1, 19, 1, 70, ((1, 33),), 1),                       # one output row (align_corners' 0 scale)
    (2, 1, 16, 16, ((8, 8), (3, 5)), 1),                 # one channel: NCHW and NHWC are the same memory
)
# (mode, align_corners, case)
MODE_CASES = [pytest.param("nearest", False, case, id=case_id(case)) for case in FUSE_CASES] + [
    pytest.param("bilinear", align_corners, case, id=f"bilinear{'-align' if align_corners else ''}-" + case_id(case))
    for case in BILINEAR_CASES for align_corners in (False, True)]


@pytest.mark.parametrize("mode, align_corners, case", MODE_CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_multires_fuse_matches_reference(native, dtype, layout, mode, align_corners, case):
    torch.manual_seed(0)
    x, low, same = fuse_inputs(case, dtype, layout)
    for relu in (True, False):
        y = native.multires_fuse(x, low, same, relu, mode, align_corners)
        assert y.dtype == dtype and y.shape == x.shape
        assert y.is_contiguous(memory_format=expected_format(x))
        if mode == "nearest":
            # fp32: bit for bit the eager composition; fp16/bf16: its fp32 value rounded once, which the tolerance
            # rule (no worse than eager in that dtype) then also holds for. Bilinear blends its taps in another
            # order than eager: equal to rounding.
            torch.testing.assert_close(y, rounded_once(x, low, same, relu), rtol=0, atol=0)
        assert_matches_reference(y, multires_fuse_ref, x, low, same, relu=relu, mode=mode,
                                 align_corners=align_corners)


def test_cpu_multires_fuse_mixed_layouts(native):
    """x channels_last with NCHW low-res and strided same-res inputs: everything is read in x's layout."""
    torch.manual_seed(0)
    x = make((2, 18, 16, 24), torch.float32, "channels_last")
    low = [make((2, 18, 8, 12), torch.float32, "nchw"), make((2, 18, 2, 3), torch.float32, "strided")]
    same = [make((2, 18, 16, 24), torch.float32, "strided")]
    y = native.multires_fuse(x, low, same, True, "nearest", False)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, multires_fuse_ref(x, low, same), rtol=0, atol=0)


def test_cpu_multires_fuse_keeps_nan_like_relu(native):
    x = torch.tensor([float("nan"), -1.0, 2.0, float("-inf")] * 5).view(1, 1, 4, 5)
    torch.testing.assert_close(native.multires_fuse(x, [], [], True, "nearest", False), torch.relu(x), rtol=0, atol=0,
                               equal_nan=True)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("mode, low_sizes", (("nearest", (2, 4)), ("bilinear", ((17, 24), (9, 13)))))
def test_cpu_multires_fuse_same_result_on_one_and_two_threads(native, mode, low_sizes, layout):
    torch.manual_seed(0)
    x, low, same = fuse_inputs((3, 36, 32, 48, low_sizes, 2), torch.bfloat16, layout)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.multires_fuse(x, low, same, True, mode, False)
        torch.set_num_threads(2)
        two = native.multires_fuse(x, low, same, True, mode, False)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, two, rtol=0, atol=0)


_BASELINE_SCRIPT = """
import os, sys, torch
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from tolerance import assert_matches_reference
from hrnet_fast.ops import extension
from hrnet_fast.ops.reference import multires_fuse_ref
assert extension.loaded()[0]
torch.manual_seed(0)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for fmt in (torch.contiguous_format, torch.channels_last):
        mk = lambda *s: torch.randn(*s).to(dtype).contiguous(memory_format=fmt)
        x, low, same = mk(2, 18, 24, 16), [mk(2, 18, 12, 8), mk(2, 18, 3, 2)], [mk(2, 18, 24, 16)]
        y = torch.ops.hrnet_fast_C.multires_fuse(x, low, same, True, "nearest", False)
        ref = multires_fuse_ref(x.float(), [z.float() for z in low], [d.float() for d in same]).to(dtype)
        torch.testing.assert_close(y, ref, rtol=0, atol=0)
        low = [mk(2, 18, 13, 9), mk(2, 18, 5, 3)]
        for align_corners in (False, True):
            y = torch.ops.hrnet_fast_C.multires_fuse(x, low, same, True, "bilinear", align_corners)
            assert_matches_reference(y, multires_fuse_ref, x, low, same, mode="bilinear", align_corners=align_corners)
"""


def test_cpu_multires_fuse_baseline_isa(native):
    """The loops compiled for the baseline ISA (chosen by ATEN_CPU_CAPABILITY=default, as for ATen's kernels)."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    result = subprocess.run([sys.executable, "-c", _BASELINE_SCRIPT, ROOT], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


# --- CPU conv_bn_act (ATen convolution + the fused epilogue) ----------------------------------------------------

@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_conv_bn_act_matches_reference(native, dtype, layout):
    torch.manual_seed(0)
    for n, cin, cout, h, w, k, stride, residual, relu in [(2, 18, 36, 13, 17, 3, 2, True, True),
                                                          (1, 3, 18, 7, 7, 1, 1, False, True),
                                                          (0, 36, 18, 8, 8, 3, 1, True, False),
                                                          (3, 72, 72, 14, 14, 3, 1, False, False)]:
        x = make((n, cin, h, w), dtype, layout)
        weight = (torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5).to(dtype)
        bias = torch.randn(cout).to(dtype)
        padding = k // 2
        ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
        r = make((n, cout, ho, wo), dtype, layout) if residual else None
        y = native.conv_bn_act(x, weight, bias, r, stride, padding, relu)
        assert y.is_contiguous(memory_format=expected_format(x)) and y.dtype == dtype
        assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=stride, padding=padding, residual=r,
                                 relu=relu)


# --- the C++ boundary checks --------------------------------------------------------------------------------

def _fuse_call(x=None, low=(), same=(), relu=True, mode="nearest", align_corners=False):
    x = torch.randn(2, 4, 8, 8) if x is None else x
    return lambda: torch.ops.hrnet_fast_C.multires_fuse(x, list(low), list(same), relu, mode, align_corners)


FUSE_ERRORS = [
    ("3-D x", _fuse_call(torch.randn(4, 8, 8)), r"x must be a 4-D \(N, C, H, W\) tensor, got shape \[4, 8, 8\]"),
    ("float64", _fuse_call(torch.randn(2, 4, 8, 8, dtype=torch.float64)), r"x has dtype Double; supported dtypes"),
    ("int", _fuse_call(torch.ones(2, 4, 8, 8, dtype=torch.int32)), r"x has dtype Int; supported dtypes"),
    ("dtype mismatch", _fuse_call(low=[torch.randn(2, 4, 4, 4).half()]),
     r"low_res\[0\] has dtype Half but x has Float"),
    ("5 low_res", _fuse_call(low=[torch.randn(2, 4, 4, 4)] * 5),
     r"takes at most 4 low_res and 4 same_res inputs, got 5 and 0"),
    ("factor 3", _fuse_call(x=torch.randn(2, 4, 9, 9), low=[torch.randn(2, 4, 3, 3)]),
     r"low_res\[0\] is 3x3 and x is 9x9; .*power-of-two factor"),
    ("unequal factors", _fuse_call(low=[torch.randn(2, 4, 4, 2)]), r"low_res\[0\] is 4x2 and x is 8x8"),
    ("channel mismatch", _fuse_call(low=[torch.randn(2, 3, 4, 4)]),
     r"low_res\[0\] has shape \[2, 3, 4, 4\]; batch and channels must match x \[2, 4, 8, 8\]"),
    ("same_res shape", _fuse_call(same=[torch.randn(2, 4, 8, 7)]), r"same_res\[0\] has shape \[2, 4, 8, 7\]"),
    ("empty spatial", _fuse_call(torch.randn(2, 4, 0, 8)), r"x has an empty spatial size"),
    ("unknown mode", _fuse_call(mode="bicubic"), r"mode must be 'nearest' or 'bilinear', got 'bicubic'"),
    ("align_corners with nearest", _fuse_call(align_corners=True),
     r"align_corners=True only applies to mode='bilinear'"),
    ("bilinear larger than x", _fuse_call(low=[torch.randn(2, 4, 9, 4)], mode="bilinear"),
     r"low_res\[0\] is 9x4 and x is 8x8; bilinear low_res inputs must be non-empty and no larger than x"),
    ("bilinear empty", _fuse_call(low=[torch.randn(2, 4, 4, 0)], mode="bilinear", align_corners=True),
     r"low_res\[0\] is 4x0 and x is 8x8; bilinear low_res inputs must be non-empty"),
    ("bilinear channel mismatch", _fuse_call(low=[torch.randn(2, 3, 3, 5)], mode="bilinear"),
     r"low_res\[0\] has shape \[2, 3, 3, 5\]; batch and channels must match x"),
]


@pytest.mark.parametrize("call,message", [e[1:] for e in FUSE_ERRORS], ids=[e[0] for e in FUSE_ERRORS])
def test_multires_fuse_cpp_checks(native, call, message):
    with pytest.raises(RuntimeError, match=r"hrnet_fast_C::multires_fuse: " + message):
        call()


def _conv_call(x_shape=(1, 4, 8, 8), w_shape=(6, 4, 3, 3), bias_shape=(6,), r_shape=None, stride=1, padding=1,
               w_dtype=torch.float32):
    x = torch.randn(*x_shape)
    weight = torch.randn(*w_shape).to(w_dtype)
    bias = torch.randn(*bias_shape) if bias_shape is not None else None
    r = torch.randn(*r_shape) if r_shape is not None else None
    return lambda: torch.ops.hrnet_fast_C.conv_bn_act(x, weight, bias, r, stride, padding, True)


CONV_ERRORS = [
    ("5x5 kernel", _conv_call(w_shape=(6, 4, 5, 5)), r"weight must be a 1x1 or 3x3 kernel, got shape \[6, 4, 5, 5\]"),
    ("channels", _conv_call(w_shape=(6, 3, 3, 3)), r"x has 4 channels but weight expects 3"),
    ("stride 3", _conv_call(stride=3), r"stride must be 1 or 2, got 3"),
    ("padding 2", _conv_call(padding=2), r"padding must be between 0 and 1 for a 3x3 kernel, got 2"),
    ("bias shape", _conv_call(bias_shape=(5,)), r"bias must have shape \(6,\), got \[5\]"),
    ("weight dtype", _conv_call(w_dtype=torch.bfloat16), r"weight has dtype BFloat16 but x has Float"),
    ("residual shape", _conv_call(r_shape=(1, 6, 4, 4)), r"residual has shape \[1, 6, 4, 4\] but the conv output is "
                                                         r"\[1, 6, 8, 8\]"),
    ("too small", _conv_call(x_shape=(1, 4, 2, 2), padding=0), r"input of spatial size \[2, 2\] is too small"),
]


@pytest.mark.parametrize("call,message", [e[1:] for e in CONV_ERRORS], ids=[e[0] for e in CONV_ERRORS])
def test_conv_bn_act_cpp_checks(native, call, message):
    with pytest.raises(RuntimeError, match=r"hrnet_fast_C::conv_bn_act: " + message):
        call()


# --- the CUDA sources compile -----------------------------------------------------------------------------------

def test_cuda_sources_compile_with_nvcc(tmp_path):
    """Every .cu compiles with nvcc against torch's headers, with the build's own flags, for sm_80 (the build adds
    sm_90): a broken CUDA kernel fails here even where only the CPU extension was built."""
    toolkit, why = extension.cuda_toolkit()
    if toolkit is None:
        pytest.skip(f"cannot compile CUDA here: {why}")
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths
    cfg = extension.build_config(with_cuda=True)
    # torch's headers; nvcc finds the toolkit's own.
    includes = include_paths() + cfg["include_dirs"] + [sysconfig.get_paths()["include"]]
    sources = [s for s in cfg["sources"] if s.endswith(".cu")]
    assert sources, "no CUDA sources found under csrc/"
    nvcc = os.path.join(toolkit, "bin", "nvcc")
    jobs = []
    for src in sources:
        obj = tmp_path / (os.path.basename(src) + ".o")
        cmd = [nvcc, "-c", src, "-o", str(obj), "-std=c++17", "-gencode=arch=compute_80,code=sm_80",
               "--compiler-options", "-fPIC", *COMMON_NVCC_FLAGS, *cfg["nvcc"], *(f"-I{p}" for p in includes)]
        jobs.append((src, obj, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for src, obj, proc in jobs:
        output = proc.communicate()[0]
        assert proc.returncode == 0, f"nvcc failed on {src}:\n{output[-4000:]}"
        assert obj.stat().st_size > 0


# --- CUDA kernels (GPU only) ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def native_cuda(native):
    if not torch._C._dispatch_has_kernel_for_dispatch_key("hrnet_fast_C::multires_fuse", "CUDA"):
        pytest.skip("the extension was built without CUDA kernels")
    return native


@pytest.mark.gpu
@pytest.mark.parametrize("mode, align_corners, case", MODE_CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_multires_fuse_matches_reference(native_cuda, dtype, layout, mode, align_corners, case):
    torch.manual_seed(0)
    x, low, same = fuse_inputs(case, dtype, layout, device="cuda")
    for relu in (True, False):
        y = native_cuda.multires_fuse(x, low, same, relu, mode, align_corners)
        assert y.is_contiguous(memory_format=expected_format(x)) and y.device == x.device
        if mode == "nearest":
            torch.testing.assert_close(y, rounded_once(x, low, same, relu), rtol=0, atol=0)
        assert_matches_reference(y, multires_fuse_ref, x, low, same, relu=relu, mode=mode,
                                 align_corners=align_corners)


@pytest.mark.gpu
@pytest.mark.parametrize("offset", (0, 1, 2, 4), ids=lambda o: f"offset{o}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_multires_fuse_vector_widths(native_cuda, dtype, offset):
    """Views starting `offset` elements into their storage: only narrower (or scalar) vector loads are aligned,
    and numel is not a multiple of the vector width, so the tail path runs too."""
    torch.manual_seed(0)
    n, c, h, w = 2, 18, 14, 14
    numel = n * c * h * w
    view = lambda: torch.randn(numel + offset, device="cuda").to(dtype)[offset:].view(n, c, h, w)  # noqa: E731
    x, same = view(), [view(), view()]
    low = [torch.randn(n, c, 7, 7, device="cuda").to(dtype)]
    y = native_cuda.multires_fuse(x, low, same, True, "nearest", False)
    torch.testing.assert_close(y, rounded_once(x, low, same, True), rtol=0, atol=0)
    for align_corners in (False, True):
        low = [torch.randn(n, c, 5, 9, device="cuda").to(dtype)]
        y = native_cuda.multires_fuse(x, low, same, True, "bilinear", align_corners)
        assert_matches_reference(y, multires_fuse_ref, x, low, same, mode="bilinear", align_corners=align_corners)


@pytest.mark.gpu
@pytest.mark.parametrize("cudnn", (True, False), ids=("cudnn", "no_cudnn"))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_conv_bn_act_matches_reference(native_cuda, dtype, layout, cudnn):
    """relu=True takes cuDNN's fused conv+bias(+add)+ReLU (with cuDNN enabled); the rest is at::convolution plus
    the epilogue kernel."""
    torch.manual_seed(0)
    with torch.backends.cudnn.flags(enabled=cudnn, allow_tf32=False):
        for n, cin, cout, h, w, k, stride, residual, relu in [(2, 18, 36, 13, 17, 3, 2, True, True),
                                                              (1, 36, 18, 28, 28, 1, 1, False, True),
                                                              (3, 72, 72, 14, 14, 3, 1, True, False),
                                                              (2, 144, 18, 7, 7, 1, 1, False, False),
                                                              (0, 18, 18, 8, 8, 3, 1, True, True)]:
            x = make((n, cin, h, w), dtype, layout, "cuda")
            weight = (torch.randn(cout, cin, k, k, device="cuda") / (cin * k * k) ** 0.5).to(dtype)
            bias = torch.randn(cout, device="cuda").to(dtype)
            padding = k // 2
            ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
            r = make((n, cout, ho, wo), dtype, layout, "cuda") if residual else None
            y = native_cuda.conv_bn_act(x, weight, bias, r, stride, padding, relu)
            assert y.is_contiguous(memory_format=expected_format(x)) and y.dtype == dtype
            assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=stride, padding=padding,
                                     residual=r, relu=relu)


@pytest.mark.gpu
def test_cuda_rejects_inputs_on_two_devices(native_cuda):
    x = torch.randn(2, 4, 8, 8, device="cuda")
    with pytest.raises(RuntimeError, match=r"low_res\[0\] is on cpu but"):
        native_cuda.multires_fuse(x, [torch.randn(2, 4, 4, 4)], [], True, "nearest", False)
