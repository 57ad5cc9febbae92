"""multires_fuse: every backend against the float64 reference, on awkward shapes, dtypes and layouts; clear errors
before any kernel runs; torch.library registration (opcheck) and torch.compile."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import pytest
import torch

import hrnet_fast.ops as ops
from hrnet_fast.ops.backends import BACKENDS
from hrnet_fast.ops.reference import multires_fuse_ref
from tolerance import assert_matches_reference, backend_device, compile_for_gpu, fail_if_a_backend_runs, zeros

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("nchw", "channels_last", "strided", "mixed")

# (N, C, H, W, low-res factors, number of same-res inputs, relu)
CASES = (
    (1, 18, 7, 7, (1,), 1, True),              # odd size: only factor 1 divides it
    (3, 18, 13, 17, (1,), 2, False),           # odd, not square
    (3, 36, 16, 24, (2, 4, 8), 1, True),       # HRNet stage-4 style fusion into the highest resolution
    (1, 3, 64, 48, (2, 4, 8, 16), 4, False),   # pose-like crop, the maximum of 4 + 4 inputs, 3 channels
    (2, 72, 8, 8, (8,), 0, True),              # the low-res input is a single pixel
    (1, 144, 4, 6, (), 3, True),               # same-res only
    (2, 18, 5, 3, (), 0, False),               # x alone: a copy
)


# Bilinear: (N, C, H, W, low-res sizes (h, w), number of same-res inputs, relu)
BILINEAR_CASES = (
    (1, 18, 7, 7, ((7, 7), (4, 4), (1, 1)), 1, True),           # a size kept (copied), odd, a single pixel
    (3, 18, 13, 17, ((7, 9),), 2, False),                       # ragged: 7x9 to 13x17
    (3, 36, 16, 24, ((8, 12), (4, 6), (2, 3)), 1, True),        # integer factors 2, 4, 8 (HRNetV2's fusion)
    (2, 5, 1, 9, ((1, 3), (1, 9)), 0, False),                   # output height 1 (align_corners' 0 scale)
    (1, 4, 9, 1, ((5, 1),), 0, True),                           # output width 1
)
# 520x520 input (PASCAL-Context) at stride 4: 130x130 from 65, 33 and 17; run in fewer dtype x layout combinations
# (the Triton interpreter takes seconds per call at this size).
PASCAL_CONTEXT_CASE = (1, 3, 130, 130, ((65, 65), (33, 33), (17, 17)), 1, True)


def bilinear_case_id(case) -> str:
    n, c, h, w, sizes, n_same, relu = case
    return f"{n}x{c}x{h}x{w}-from{'.'.join(f'{a}x{b}' for a, b in sizes)}-same{n_same}-{'relu' if relu else 'id'}"


def case_id(case) -> str:
    n, c, h, w, factors, n_same, relu = case
    return f"{n}x{c}x{h}x{w}-up{'.'.join(map(str, factors)) or 'none'}-same{n_same}-{'relu' if relu else 'id'}"


def make(shape: Sequence[int], dtype: torch.dtype, device: torch.device, layout: str) -> torch.Tensor:
    """A random [N, C, H, W] tensor laid out as asked: contiguous, channels_last, or a strided view of a larger
    tensor (no dense layout at all)."""
    n, c, h, w = shape
    if layout == "strided":
        base = torch.randn(n, 2 * c, h + 1, 2 * w, dtype=torch.float32, device=device).to(dtype)
        t = base[:, ::2, 1:, ::2]
        assert not t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)
        return t
    t = torch.randn(n, c, h, w, dtype=torch.float32, device=device).to(dtype)
    return t.to(memory_format=torch.channels_last) if layout == "channels_last" else t


def inputs(case, dtype: torch.dtype, device: torch.device, layout: str
           ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
    """x, low_res, same_res for a case (low-res inputs given by factors, or by (h, w) sizes for bilinear cases).
    'mixed': x channels_last, low-res inputs NCHW, same-res inputs strided."""
    n, c, h, w, low_sizes, n_same, _ = case
    x_layout, low_layout, same_layout = ("channels_last", "nchw", "strided") if layout == "mixed" else (layout,) * 3
    x = make((n, c, h, w), dtype, device, x_layout)
    low_sizes = [size if isinstance(size, tuple) else (h // size, w // size) for size in low_sizes]
    low = [make((n, c, zh, zw), dtype, device, low_layout) for zh, zw in low_sizes]
    same = [make((n, c, h, w), dtype, device, same_layout) for _ in range(n_same)]
    return x, low, same


def expected_format(layout: str) -> torch.memory_format:
    """The output keeps x's memory format: channels_last when x is, else contiguous (NCHW)."""
    return torch.channels_last if layout in ("channels_last", "mixed") else torch.contiguous_format


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, dtype, layout, case):
    device = backend_device(backend, "multires_fuse")
    torch.manual_seed(0)
    x, low, same = inputs(case, dtype, device, layout)
    relu = case[-1]
    y = ops.multires_fuse(x, low, same, relu=relu, backend=backend)
    assert y.dtype == dtype and y.device == x.device
    assert y.is_contiguous(memory_format=expected_format(layout))
    assert_matches_reference(y, multires_fuse_ref, x, low, same, relu=relu)


@pytest.mark.parametrize("align_corners", (False, True), ids=("half_pixel", "align_corners"))
@pytest.mark.parametrize("case", BILINEAR_CASES, ids=bilinear_case_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bilinear_matches_reference(backend, dtype, layout, case, align_corners):
    """mode="bilinear" against F.interpolate(size=x's, mode="bilinear") + add + ReLU evaluated in float64."""
    device = backend_device(backend, "multires_fuse")
    torch.manual_seed(0)
    x, low, same = inputs(case, dtype, device, layout)
    relu = case[-1]
    y = ops.multires_fuse(x, low, same, relu=relu, mode="bilinear", align_corners=align_corners, backend=backend)
    assert y.dtype == dtype and y.device == x.device
    assert y.is_contiguous(memory_format=expected_format(layout))
    assert_matches_reference(y, multires_fuse_ref, x, low, same, relu=relu, mode="bilinear",
                             align_corners=align_corners)


@pytest.mark.parametrize("align_corners", (False, True), ids=("half_pixel", "align_corners"))
@pytest.mark.parametrize("dtype, layout", ((torch.float32, "nchw"), (torch.float16, "channels_last"),
                                           (torch.bfloat16, "mixed")), ids=("fp32-nchw", "fp16-cl", "bf16-mixed"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bilinear_arbitrary_sizes(backend, dtype, layout, align_corners):
    device = backend_device(backend, "multires_fuse")
    torch.manual_seed(0)
    x, low, same = inputs(PASCAL_CONTEXT_CASE, dtype, device, layout)
    y = ops.multires_fuse(x, low, same, mode="bilinear", align_corners=align_corners, backend=backend)
    assert y.is_contiguous(memory_format=expected_format(layout))
    assert_matches_reference(y, multires_fuse_ref, x, low, same, mode="bilinear", align_corners=align_corners)


@pytest.mark.parametrize("align_corners", (False, True), ids=("half_pixel", "align_corners"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bilinear_nan_and_inf_spread_like_eager(backend, align_corners):
    """A NaN or Inf in a low-res pixel reaches exactly the output pixels whose taps read it, as in F.interpolate
    (a zero weight times Inf is NaN there too)."""
    device = backend_device(backend, "multires_fuse")
    torch.manual_seed(0)
    x, z = torch.randn(1, 2, 13, 17, device=device), torch.randn(1, 2, 7, 9, device=device)
    z[0, 0, 3, 4] = float("nan")
    z[0, 1, 6, 0] = float("inf")
    y = ops.multires_fuse(x, [z], relu=False, mode="bilinear", align_corners=align_corners, backend=backend)
    expected = multires_fuse_ref(x, [z], relu=False, mode="bilinear", align_corners=align_corners)
    assert torch.equal(torch.isnan(y), torch.isnan(expected))
    assert torch.equal(torch.isinf(y), torch.isinf(expected))


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_is_a_new_tensor(backend):
    """With no other input and no ReLU the op is a copy; it must never hand back (an alias of) x."""
    device = backend_device(backend, "multires_fuse")
    x = torch.randn(1, 18, 4, 4, device=device)
    y = ops.multires_fuse(x, relu=False, backend=backend)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    y.add_(1.0)
    assert not torch.equal(y, x)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_zero(backend, layout):
    device = backend_device(backend, "multires_fuse")
    x = make((0, 18, 8, 8), torch.float32, device, layout)
    z = make((0, 18, 4, 4), torch.float32, device, layout)
    y = ops.multires_fuse(x, [z], [x.clone()], backend=backend)
    assert y.shape == (0, 18, 8, 8) and y.dtype == torch.float32  # an empty tensor has no meaningful layout


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_like_eager(backend):
    """A NaN in any input stays NaN through the sum and the ReLU, as in eager PyTorch (torch.relu(nan) is nan)."""
    device = backend_device(backend, "multires_fuse")
    x, z = torch.randn(1, 18, 8, 8, device=device), torch.randn(1, 18, 4, 4, device=device)
    x[0, 0, 3, 3] = float("nan")
    z[0, 1, 0, 0] = float("nan")  # upsampled to rows 0-1, columns 0-1
    y = ops.multires_fuse(x, [z], relu=True, backend=backend)
    expected = torch.zeros(1, 18, 8, 8, dtype=torch.bool)
    expected[0, 0, 3, 3] = True
    expected[0, 1, 0:2, 0:2] = True
    assert torch.equal(torch.isnan(y).cpu(), expected)


def test_triton_batch_zero_does_not_launch(monkeypatch):
    backend_device("triton", "multires_fuse")
    from hrnet_fast_kernels import multires_fuse as module

    monkeypatch.setattr(module, "_multires_fuse_kernel", None)  # any launch would fail: None is not indexable
    device = "cuda" if torch.cuda.is_available() else "cpu"
    y = module.multires_fuse(torch.randn(0, 18, 8, 8, device=device), [torch.randn(0, 18, 2, 2, device=device)],
                             [], relu=True)
    assert y.shape == (0, 18, 8, 8)


def test_triton_int64_indexing(monkeypatch):
    """The int64 index path (taken when an offset can reach 2**31) gives the same answers as the int32 one."""
    device = backend_device("triton", "multires_fuse")
    import hrnet_fast_kernels as kernels

    torch.manual_seed(0)
    x, low, same = inputs(CASES[2], torch.float32, device, "mixed")
    int32_result = ops.multires_fuse(x, low, same, backend="triton")
    monkeypatch.setattr(kernels, "INT32_LIMIT", 1)
    assert kernels.needs_int64(x)
    torch.testing.assert_close(ops.multires_fuse(x, low, same, backend="triton"), int32_result, rtol=0, atol=0)


def test_triton_kernel_compiles_for_gpus():
    """The GPU code path, which the interpreter does not compile: each dtype, both layouts and index widths, the
    largest and smallest input counts, for sm_80 and sm_90, down to cubins."""
    compile_for_gpu("hrnet_fast_kernels.multires_fuse", "_multires_fuse_kernel", [
        dict(dtype=dtype, constexprs=dict(N_LOW=n_low, N_SAME=n_same, RELU=True, CHANNELS_LAST=cl,
                                          BILINEAR=bilinear, ALIGN_CORNERS=align, INT64=int64),
             archs=[80, 90], all_configs=False)
        for dtype, n_low, n_same, cl, bilinear, align, int64 in (
            ("fp32", 4, 4, False, False, False, False), ("fp16", 0, 1, True, False, False, True),
            ("bf16", 3, 0, True, False, False, False), ("fp32", 4, 0, False, True, False, False),
            ("fp16", 3, 1, True, True, True, True), ("bf16", 1, 0, False, True, True, False))
    ])


ERROR_CASES = {
    "wrong channels": (lambda: (zeros(1, 18, 8, 8), [zeros(1, 36, 4, 4)], []), ValueError, "batch and channels"),
    "wrong batch": (lambda: (zeros(2, 18, 8, 8), [], [zeros(1, 18, 8, 8)]), ValueError, r"same_res\[0\] has shape"),
    "dtype mix": (lambda: (zeros(1, 18, 8, 8), [zeros(1, 18, 4, 4, dtype=torch.float16)], []), TypeError,
                  "must share one dtype"),
    "factor not a power of two": (lambda: (zeros(1, 18, 12, 12), [zeros(1, 18, 4, 4)], []), ValueError, "power-of-two"),
    "factor differs in H and W": (lambda: (zeros(1, 18, 8, 8), [zeros(1, 18, 4, 2)], []), ValueError, "power-of-two"),
    "factor does not divide": (lambda: (zeros(1, 18, 9, 9), [zeros(1, 18, 4, 4)], []), ValueError, "power-of-two"),
    "larger than x": (lambda: (zeros(1, 18, 4, 4), [zeros(1, 18, 8, 8)], []), ValueError, "power-of-two"),
    "too many low_res": (lambda: (zeros(1, 18, 8, 8), [zeros(1, 18, 4, 4)] * 5, []), ValueError, "at most 4"),
    "too many same_res": (lambda: (zeros(1, 18, 8, 8), [], [zeros(1, 18, 8, 8)] * 5), ValueError, "at most 4"),
    "integer dtype": (lambda: (zeros(1, 18, 8, 8, dtype=torch.int32), [], []), TypeError, "supported dtypes"),
    "integer low_res": (lambda: (zeros(1, 18, 8, 8), [zeros(1, 18, 4, 4, dtype=torch.int64)], []), TypeError,
                        "supported dtypes"),
    "not 4-D": (lambda: (zeros(18, 8, 8), [], []), ValueError, "4-D"),
    "not a tensor": (lambda: (zeros(1, 18, 8, 8), [[0.0]], []), TypeError, "must be a torch.Tensor"),
    "empty spatial size": (lambda: (zeros(1, 18, 0, 8), [], []), ValueError, "empty spatial size"),
}
# The same, for mode="bilinear" (with align_corners).
BILINEAR_ERROR_CASES = {
    "larger than x": (lambda: (zeros(1, 18, 8, 8), [zeros(1, 18, 9, 4)], []), ValueError,
                      r"low_res\[0\] is 9x4 and x is 8x8: bilinear low_res inputs must be non-empty and no larger"),
    "empty low_res": (lambda: (zeros(1, 18, 8, 8), [zeros(1, 18, 4, 0)], []), ValueError,
                      r"low_res\[0\] is 4x0 and x is 8x8: bilinear low_res inputs must be non-empty"),
    "wrong channels": (lambda: (zeros(1, 18, 8, 8), [zeros(1, 36, 3, 5)], []), ValueError, "batch and channels"),
    "dtype mix": (lambda: (zeros(1, 18, 8, 8), [zeros(1, 18, 3, 3, dtype=torch.bfloat16)], []), TypeError,
                  "must share one dtype"),
}


@pytest.mark.parametrize("name", ERROR_CASES)
def test_invalid_inputs_raise_before_any_kernel(monkeypatch, name):
    make_args, error, match = ERROR_CASES[name]
    x, low, same = make_args()
    fail_if_a_backend_runs(monkeypatch)
    with pytest.raises(error, match=match):
        ops.multires_fuse(x, low, same)


@pytest.mark.parametrize("align_corners", (False, True), ids=("half_pixel", "align_corners"))
@pytest.mark.parametrize("name", BILINEAR_ERROR_CASES)
def test_invalid_bilinear_inputs_raise_before_any_kernel(monkeypatch, name, align_corners):
    make_args, error, match = BILINEAR_ERROR_CASES[name]
    x, low, same = make_args()
    fail_if_a_backend_runs(monkeypatch)
    with pytest.raises(error, match=match):
        ops.multires_fuse(x, low, same, mode="bilinear", align_corners=align_corners)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(mode="bicubic"), ValueError, r"mode must be one of 'nearest', 'bilinear', got 'bicubic'"),
    (dict(mode="nearest", align_corners=True), ValueError, r"align_corners=True only applies to mode='bilinear'"),
    (dict(mode="bilinear", align_corners=1), TypeError, r"align_corners must be a bool, got int"),
], ids=("unknown mode", "align_corners with nearest", "align_corners not a bool"))
def test_invalid_mode_raises_before_any_kernel(monkeypatch, kwargs, error, match):
    fail_if_a_backend_runs(monkeypatch)
    with pytest.raises(error, match=match):
        ops.multires_fuse(zeros(1, 18, 8, 8), [zeros(1, 18, 4, 4)], **kwargs)


def test_nearest_error_points_to_bilinear():
    """A size nearest cannot map (130 from 33) names the mode that can."""
    with pytest.raises(ValueError, match=r"is 33x33 and x is 130x130: .*mode='bilinear' takes any size"):
        ops.multires_fuse(zeros(1, 2, 130, 130), [zeros(1, 2, 33, 33)])


@pytest.mark.gpu
def test_device_mix_raises_before_any_kernel(monkeypatch):
    x = torch.zeros(1, 18, 8, 8, device="cuda")
    fail_if_a_backend_runs(monkeypatch)
    with pytest.raises(ValueError, match="must be on one device"):
        ops.multires_fuse(x, [torch.zeros(1, 18, 4, 4)])


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown backend"):
        ops.multires_fuse(torch.zeros(1, 18, 8, 8), backend="opencl")


# opcheck's default set: test_schema, test_autograd_registration, test_faketensor, test_aot_dispatch_static and
# test_aot_dispatch_dynamic. The op has no autograd formula; test_autograd_registration checks it says so rather
# than silently returning a result without a grad_fn, and the aot_dispatch tests run the inference graph.
MODES = (("nearest", False), ("bilinear", False), ("bilinear", True))
MODE_IDS = ("nearest", "bilinear", "bilinear-align_corners")


@pytest.mark.parametrize("mode, align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, layout, mode, align_corners):
    device = backend_device(backend, "multires_fuse")
    torch.manual_seed(0)
    low_sizes = (2, 4) if mode == "nearest" else ((5, 7), (2, 3))
    x, low, same = inputs((2, 18, 8, 12, low_sizes, 1, True), torch.float32, device, layout)
    torch.library.opcheck(torch.ops.hrnet_fast.multires_fuse.default,
                          (x, low, same, True, mode, align_corners, backend))


@pytest.mark.parametrize("mode, align_corners", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("backend", ("torch", "cpu"))
def test_torch_compile_fullgraph(backend, mode, align_corners):
    device = backend_device(backend, "multires_fuse")
    torch.manual_seed(0)
    low_sizes = (2,) if mode == "nearest" else ((3, 5),)
    x, low, same = inputs((2, 18, 8, 12, low_sizes, 1, True), torch.float32, device, "channels_last")

    def fuse(x, z, d):
        return ops.multires_fuse(x, [z], [d], mode=mode, align_corners=align_corners, backend=backend)

    torch._dynamo.reset()
    compiled = torch.compile(fuse, fullgraph=True)
    torch.testing.assert_close(compiled(x, low[0], same[0]), fuse(x, low[0], same[0]), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ("nchw", "channels_last", "mixed"))
@pytest.mark.parametrize("backend", ("triton", "cuda"))
def test_gpu_hrnet_shapes(backend, dtype, layout):
    """Real compiles on HRNet-W18 fusion shapes at 256x192 (pose) and 224x224, batch 4."""
    device = backend_device(backend, "multires_fuse")
    torch.manual_seed(0)
    for case in ((4, 18, 64, 48, (2, 4, 8), 0, True), (4, 36, 28, 28, (2, 4), 1, True),
                 (4, 72, 14, 14, (2,), 2, True), (4, 144, 7, 7, (), 3, False)):
        x, low, same = inputs(case, dtype, device, layout)
        y = ops.multires_fuse(x, low, same, relu=case[-1], backend=backend)
        assert y.is_contiguous(memory_format=expected_format(layout))
        assert_matches_reference(y, multires_fuse_ref, x, low, same, relu=case[-1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ("nchw", "channels_last", "mixed"))
@pytest.mark.parametrize("backend", ("triton", "cuda"))
def test_gpu_bilinear_segmentation_shapes(backend, dtype, layout):
    """Real compiles on HRNetV2-W18 segmentation fusions at 512x1024 (stride-4 branch 128x256 from 64x128, 32x64,
    16x32), PASCAL-Context's 130/65/33/17 and a ragged 13x17 from 7x9, both align_corners values."""
    device = backend_device(backend, "multires_fuse")
    torch.manual_seed(0)
    for case in ((2, 18, 128, 256, (2, 4, 8), 0, True), (2, 36, 64, 128, (2, 4), 1, True),
                 (2, 18, 130, 130, ((65, 65), (33, 33), (17, 17)), 0, True), (3, 19, 13, 17, ((7, 9),), 1, False)):
        x, low, same = inputs(case, dtype, device, layout)
        for align_corners in (False, True):
            y = ops.multires_fuse(x, low, same, relu=case[-1], mode="bilinear", align_corners=align_corners,
                                  backend=backend)
            assert y.is_contiguous(memory_format=expected_format(layout))
            assert_matches_reference(y, multires_fuse_ref, x, low, same, relu=case[-1], mode="bilinear",
                                     align_corners=align_corners)
