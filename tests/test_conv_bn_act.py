"""conv_bn_act: every backend against the float64 reference, on HRNet's awkward channel counts and sizes, dtypes
and layouts; clear errors before any kernel runs; torch.library registration (opcheck) and torch.compile."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import pytest
import torch

import hrnet_fast.ops as ops
from hrnet_fast.ops.backends import BACKENDS
from hrnet_fast.ops.reference import conv_bn_act_ref
from tolerance import assert_matches_reference, backend_device, fail_if_a_backend_runs, zeros

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("nchw", "channels_last", "strided")

# (N, Cin, Cout, H, W, kernel, stride, padding, residual, relu)
CASES = (
    (1, 3, 18, 13, 17, 3, 2, 1, False, True),     # stem: 3 input channels, odd size
    (3, 18, 36, 7, 7, 3, 2, 1, False, True),      # transition down to the next branch
    (3, 18, 18, 13, 17, 3, 1, 1, True, True),     # basic block, second conv: residual then ReLU
    (1, 36, 72, 7, 7, 1, 1, 0, False, False),     # 1x1 fuse-layer conv, no ReLU
    (2, 72, 144, 8, 6, 3, 1, 0, True, False),     # no padding, residual without ReLU
    (1, 144, 18, 5, 7, 1, 2, 0, True, True),      # 1x1 stride 2, more than 128 input channels
    (1, 18, 36, 64, 48, 3, 2, 1, False, True),    # pose-like crop
)


def case_id(case) -> str:
    n, cin, cout, h, w, k, s, p, res, relu = case
    return f"{n}x{cin}x{h}x{w}-{cout}k{k}s{s}p{p}{'-res' if res else ''}{'-relu' if relu else ''}"


def make(shape: Sequence[int], dtype: torch.dtype, device: torch.device, layout: str,
         scale: float = 1.0) -> torch.Tensor:
    """A random tensor laid out as asked: contiguous, channels_last, or a strided view of a larger tensor."""
    if layout == "strided":
        n, c, h, w = shape
        base = torch.randn(n, 2 * c, h + 1, 2 * w, device=device) * scale
        t = base.to(dtype)[:, ::2, 1:, ::2]
        assert not t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)
        return t
    t = (torch.randn(*shape, device=device) * scale).to(dtype)
    return t.to(memory_format=torch.channels_last) if layout == "channels_last" else t


def inputs(case, dtype: torch.dtype, device: torch.device, layout: str
           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """x, folded weight, bias, residual. Weights are scaled like a BN-folded conv (outputs O(1)). With 'strided',
    x and the weight are strided views and the residual is channels_last: one call mixes three layouts."""
    n, cin, cout, h, w, k, s, p, res, _ = case
    x = make((n, cin, h, w), dtype, device, layout)
    weight = make((cout, cin, k, k), dtype, device, layout, scale=(cin * k * k) ** -0.5)
    bias = make((cout,), dtype, device, "nchw")
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    residual_layout = "channels_last" if layout == "strided" else layout
    residual = make((n, cout, ho, wo), dtype, device, residual_layout) if res else None
    return x, weight, bias, residual


def expected_format(layout: str) -> torch.memory_format:
    """The output keeps x's memory format: channels_last when x is, else contiguous (NCHW)."""
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def interpreter_without_bf16_dot(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """The Triton interpreter cannot run tl.dot on bfloat16 (test_triton_interpreter_refuses_bfloat16)."""
    return backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, dtype, layout, case):
    device = backend_device(backend, "conv_bn_act")
    if interpreter_without_bf16_dot(backend, device, dtype):
        pytest.skip("the Triton interpreter cannot run tl.dot on bfloat16; covered on GPU by test_gpu_hrnet_shapes")
    torch.manual_seed(0)
    x, weight, bias, residual = inputs(case, dtype, device, layout)
    _, _, _, _, _, _, stride, padding, _, relu = case
    y = ops.conv_bn_act(x, weight, bias, stride=stride, padding=padding, residual=residual, relu=relu,
                        backend=backend)
    assert y.dtype == dtype and y.device == x.device
    assert y.is_contiguous(memory_format=expected_format(layout))
    assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=stride, padding=padding,
                             residual=residual, relu=relu)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_bias(backend):
    device = backend_device(backend, "conv_bn_act")
    torch.manual_seed(0)
    x, weight, _, residual = inputs((2, 18, 36, 9, 11, 3, 1, 1, True, True), torch.float32, device, "nchw")
    y = ops.conv_bn_act(x, weight, None, stride=1, padding=1, residual=residual, backend=backend)
    assert_matches_reference(y, conv_bn_act_ref, x, weight, None, stride=1, padding=1, residual=residual)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_zero(backend, layout):
    device = backend_device(backend, "conv_bn_act")
    x = make((0, 18, 13, 17), torch.float32, device, layout)
    weight = make((36, 18, 3, 3), torch.float32, device, "nchw")
    residual = make((0, 36, 7, 9), torch.float32, device, layout)
    y = ops.conv_bn_act(x, weight, torch.zeros(36, device=device), stride=2, padding=1, residual=residual,
                        backend=backend)
    assert y.shape == (0, 36, 7, 9) and y.dtype == torch.float32  # an empty tensor has no meaningful layout


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_like_eager(backend):
    """A NaN input pixel makes every output it reaches NaN, through the ReLU too (torch.relu(nan) is nan)."""
    device = backend_device(backend, "conv_bn_act")
    torch.manual_seed(0)
    x = torch.randn(1, 18, 8, 8, device=device)
    x[0, 0, 3, 3] = float("nan")
    weight = torch.randn(36, 18, 3, 3, device=device)
    y = ops.conv_bn_act(x, weight, torch.randn(36, device=device), padding=1, relu=True, backend=backend)
    expected = torch.zeros(1, 36, 8, 8, dtype=torch.bool)
    expected[0, :, 2:5, 2:5] = True  # the 3x3 neighbourhood of (3, 3)
    assert torch.equal(torch.isnan(y).cpu(), expected)


def test_triton_batch_zero_does_not_launch(monkeypatch):
    backend_device("triton", "conv_bn_act")
    from hrnet_fast_kernels import conv_bn_act as module

    monkeypatch.setattr(module, "_conv_bn_act_kernel", None)  # any launch would fail: None is not indexable
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, weight = torch.randn(0, 18, 8, 8, device=device), torch.randn(36, 18, 1, 1, device=device)
    y = module.conv_bn_act(x, weight, None, stride=2, padding=0, residual=None, relu=True)
    assert y.shape == (0, 36, 4, 4)


def test_triton_int64_indexing(monkeypatch):
    """The int64 index path (taken when an offset can reach 2**31) gives the same answers as the int32 one."""
    device = backend_device("triton", "conv_bn_act")
    import hrnet_fast_kernels as kernels

    torch.manual_seed(0)
    x, weight, bias, residual = inputs(CASES[2], torch.float32, device, "strided")
    kwargs = dict(stride=1, padding=1, residual=residual, backend="triton")
    int32_result = ops.conv_bn_act(x, weight, bias, **kwargs)
    monkeypatch.setattr(kernels, "INT32_LIMIT", 1)
    assert kernels.needs_int64(x)
    torch.testing.assert_close(ops.conv_bn_act(x, weight, bias, **kwargs), int32_result, rtol=0, atol=0)


def test_triton_interpreter_refuses_bfloat16():
    device = backend_device("triton", "conv_bn_act")
    if device.type != "cpu":
        pytest.skip("triton runs compiled on the GPU here, not through the interpreter")
    x, weight = torch.zeros(1, 18, 8, 8, dtype=torch.bfloat16), torch.zeros(18, 18, 1, 1, dtype=torch.bfloat16)
    with pytest.raises(NotImplementedError, match="cannot run tl.dot on bfloat16"):
        ops.conv_bn_act(x, weight, backend="triton")


def test_triton_candidates_fit_the_channels():
    """Tuning only times tiles that fit the channel counts (BLOCK_N/BLOCK_K clamped to the padded counts), a
    short list per shape class, and the interpreter gets exactly one."""
    from hrnet_fast_kernels.conv_bn_act import _TILES, candidates
    configs = candidates(3, 18, 49)
    assert configs and all(c.kwargs["BLOCK_K"] == 16 and c.kwargs["BLOCK_N"] <= 32 for c in configs)
    assert len(configs) <= max(len(t) for t in _TILES.values())
    configs = candidates(144, 144, 32 * 56 * 56)
    assert all(c.kwargs["BLOCK_K"] <= 256 and c.kwargs["BLOCK_N"] <= 256 for c in configs)


# 3x3 convs for the kernel-row K runs (dense NHWC walks a kernel row's three taps as one run of 3 * Cin values with
# a per-element padding mask): every HRNet width, maps narrower than a chunk, odd sizes, a 256x192 pose input's
# stride-4 branch (64x48), batch 0, 1 and 3, both strides. (N, Cin, Cout, H, W, stride, padding, residual)
ROW_CASES = (
    (1, 3, 18, 13, 17, 1, 1, False),
    (3, 18, 18, 7, 7, 1, 1, True),
    (1, 18, 18, 64, 48, 1, 1, True),
    (3, 36, 36, 13, 17, 1, 1, False),
    (1, 72, 72, 7, 7, 1, 1, True),
    (1, 144, 144, 7, 7, 1, 1, False),
    (3, 18, 36, 13, 17, 2, 1, False),
    (1, 36, 18, 13, 17, 1, 0, False),
    (0, 18, 18, 7, 7, 1, 1, True),
)


ROW_LAYOUTS = (("channels_last", torch.float32), ("channels_last", torch.float16), ("nchw", torch.float32),
               ("strided", torch.float32))


@pytest.mark.parametrize("layout,dtype,case", [
    pytest.param(layout, dtype, case, id=f"{layout}-{dtype}-" + "x".join(map(str, case[:5])) + f"s{case[5]}p{case[6]}")
    for layout, dtype in ROW_LAYOUTS for case in ROW_CASES
    if not (layout == "strided" and case[0] == 0)])  # an empty tensor has no strided view that is not contiguous
def test_triton_3x3_kernel_rows(layout, dtype, case):
    device = backend_device("triton", "conv_bn_act")
    torch.manual_seed(0)
    n, cin, cout, h, w, stride, padding, res = case
    x, weight, bias, residual = inputs((n, cin, cout, h, w, 3, stride, padding, res, True), dtype, device, layout)
    y = ops.conv_bn_act(x, weight, bias, stride=stride, padding=padding, residual=residual, relu=True,
                        backend="triton")
    assert y.shape == conv_bn_act_ref(x, weight, bias, stride=stride, padding=padding, residual=residual).shape
    if n:
        assert y.is_contiguous(memory_format=expected_format(layout))
        assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=stride, padding=padding,
                                 residual=residual, relu=True)


def test_triton_row_runs_take_a_wide_chunk(monkeypatch):
    """Dense NHWC 3x3 with Cin = 18 walks each kernel row's 54 values in one 64-wide K chunk."""
    import hrnet_fast_kernels.conv_bn_act as conv
    monkeypatch.setattr(conv, "_INTERPRETED", False)
    assert {c.kwargs["BLOCK_K"] for c in conv.candidates(18, 18, 64 * 48, row_taps=3)} == {64}
    assert {c.kwargs["BLOCK_K"] for c in conv.candidates(18, 18, 64 * 48)} == {32}  # per tap: 18 of 32
    assert {c.kwargs["BLOCK_K"] for c in conv.candidates(72, 72, 64 * 48, row_taps=3)} == {32}


def test_triton_half_wave_shapes_are_not_tuned(monkeypatch):
    """A small map whose first tile makes at most half a wave of programs gets that tile alone (nothing to time,
    nothing else to compile); a larger one keeps its shape class's list."""
    import hrnet_fast_kernels.conv_bn_act as conv
    monkeypatch.setattr(conv, "_INTERPRETED", False)
    assert len(conv.candidates(144, 144, 7 * 7)) == 1  # 2 x 5 programs of 32x32
    assert len(conv.candidates(36, 36, 28 * 28)) == 1  # 32 x 2
    assert len(conv.candidates(18, 18, 56 * 56)) == 3  # 128 x 1
    assert len(conv.candidates(18, 18, 2 * 56 * 56)) > 1  # large class
    assert len(conv.all_gpu_configs(144, 144)) == len(conv._TILES["small"]) + len(conv._TILES["large"])


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("shape", ((18, 18, 3, 3), (144, 72, 1, 1), (36, 3, 3, 3)))
def test_triton_packed_weight_layout(shape, dtype):
    """pack_weight: a [Cout, Cin, k, k] view equal to the weight, over a K-major buffer whose row
    (kh * KW + kw) * Cin + cin holds w[:, cin, kh, kw], Cout zero-padded to 16 bytes."""
    from hrnet_fast_kernels.conv_bn_act import is_packed, pack_weight, packed_weight
    torch.manual_seed(0)
    w = torch.randn(*shape).to(dtype)
    cout, cin, kh, kw = shape
    packed = pack_weight(w.to(memory_format=torch.channels_last))
    assert torch.equal(packed, w) and is_packed(packed) and not is_packed(w)
    assert packed_weight(packed) is packed  # the launcher reads it as it is
    cout_pad = packed.stride(1)
    assert (cout_pad * packed.element_size()) % 16 == 0 and cout <= cout_pad
    buffer = torch.empty(0, dtype=dtype).set_(packed.untyped_storage()).view(kh * kw * cin, cout_pad)
    for i, j, c in ((0, 0, 0), (kh - 1, kw - 1, cin - 1), (kh // 2, 0, cin // 2)):
        assert torch.equal(buffer[(i * kw + j) * cin + c, :cout], w[:, c, i, j])
    assert not buffer[:, cout:].any()


def test_triton_packed_strides_need_the_whole_buffer():
    """A tensor with the packed strides but a storage ending before the padding is not read as packed."""
    from hrnet_fast_kernels.conv_bn_act import is_packed
    storage = torch.zeros(9 * 18 * 24 - 6)  # one row's padding short
    view = storage.as_strided((18, 18, 3, 3), (1, 24, 3 * 18 * 24, 18 * 24))
    assert not is_packed(view)


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_weight_on_every_backend(backend):
    """The packed form is an ordinary (strided) weight to every backend, so a converted model can hand it to
    whichever backend runs the call."""
    from hrnet_fast_kernels.conv_bn_act import pack_weight
    device = backend_device(backend, "conv_bn_act")
    torch.manual_seed(0)
    x, weight, bias, residual = inputs((3, 18, 36, 13, 17, 3, 2, 1, False, True), torch.float32, device,
                                       "channels_last")
    y = ops.conv_bn_act(x, pack_weight(weight), bias, stride=2, padding=1, relu=True, backend=backend)
    assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=2, padding=1, relu=True)


@pytest.mark.parametrize("residual_layout", ("nchw", "channels_last"))
def test_triton_channels_last_with_mixed_residual(residual_layout):
    """channels_last x with an NCHW residual leaves the dense-NHWC path; both give the reference."""
    device = backend_device("triton", "conv_bn_act")
    torch.manual_seed(0)
    x, weight, bias, _ = inputs((3, 18, 18, 7, 7, 3, 1, 1, False, True), torch.float16, device, "channels_last")
    residual = make((3, 18, 7, 7), torch.float16, device, residual_layout)
    y = ops.conv_bn_act(x, weight, bias, stride=1, padding=1, residual=residual, relu=True, backend="triton")
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=1, padding=1, residual=residual, relu=True)


# name: (x, weight, bias, stride, padding, residual), error, message fragment
ERROR_CASES = {
    "wrong input channels": ((zeros(1, 18, 8, 8), zeros(36, 36, 3, 3), None, 1, 1, None), ValueError,
                             "x has 18 channels but weight expects 36"),
    "5x5 kernel": ((zeros(1, 18, 8, 8), zeros(36, 18, 5, 5), None, 1, 2, None), ValueError, "1x1 or 3x3"),
    "non-square kernel": ((zeros(1, 18, 8, 8), zeros(36, 18, 1, 3), None, 1, 0, None), ValueError, "1x1 or 3x3"),
    "stride 3": ((zeros(1, 18, 8, 8), zeros(36, 18, 3, 3), None, 3, 1, None), ValueError, "stride must be 1 or 2"),
    "padding 2 for 3x3": ((zeros(1, 18, 8, 8), zeros(36, 18, 3, 3), None, 1, 2, None), ValueError, "padding must be"),
    "padding 1 for 1x1": ((zeros(1, 18, 8, 8), zeros(36, 18, 1, 1), None, 1, 1, None), ValueError, "padding must be"),
    "negative padding": ((zeros(1, 18, 8, 8), zeros(36, 18, 3, 3), None, 1, -1, None), ValueError, "padding must be"),
    "bias shape": ((zeros(1, 18, 8, 8), zeros(36, 18, 3, 3), zeros(18), 1, 1, None), ValueError, r"bias must have shape"),
    "residual shape": ((zeros(1, 18, 8, 8), zeros(36, 18, 3, 3), None, 2, 1, zeros(1, 36, 8, 8)), ValueError,
                       "residual has shape"),
    "weight dtype mix": ((zeros(1, 18, 8, 8), zeros(36, 18, 3, 3, dtype=torch.float16), None, 1, 1, None), TypeError,
                         "must share one dtype"),
    "residual dtype mix": ((zeros(1, 18, 8, 8), zeros(36, 18, 1, 1), None, 1, 0, zeros(1, 36, 8, 8, dtype=torch.bfloat16)),
                           TypeError, "must share one dtype"),
    "integer dtype": ((zeros(1, 18, 8, 8, dtype=torch.int32), zeros(36, 18, 3, 3, dtype=torch.int32), None, 1, 1, None),
                      TypeError, "supported dtypes"),
    "input too small": ((zeros(1, 18, 2, 2), zeros(36, 18, 3, 3), None, 1, 0, None), ValueError, "too small"),
    "x not 4-D": ((zeros(18, 8, 8), zeros(36, 18, 3, 3), None, 1, 1, None), ValueError, "4-D"),
}


@pytest.mark.parametrize("name", ERROR_CASES)
def test_invalid_inputs_raise_before_any_kernel(monkeypatch, name):
    (x, weight, bias, stride, padding, residual), error, match = ERROR_CASES[name]
    fail_if_a_backend_runs(monkeypatch)
    with pytest.raises(error, match=match):
        ops.conv_bn_act(x, weight, bias, stride=stride, padding=padding, residual=residual)


@pytest.mark.gpu
def test_device_mix_raises_before_any_kernel(monkeypatch):
    x = torch.zeros(1, 18, 8, 8, device="cuda")
    fail_if_a_backend_runs(monkeypatch)
    with pytest.raises(ValueError, match="must be on one device"):
        ops.conv_bn_act(x, torch.zeros(36, 18, 3, 3), padding=1)


# opcheck's default set: test_schema, test_autograd_registration, test_faketensor, test_aot_dispatch_static and
# test_aot_dispatch_dynamic. The op has no autograd formula; test_autograd_registration checks it says so rather
# than silently returning a result without a grad_fn, and the aot_dispatch tests run the inference graph.
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, layout):
    device = backend_device(backend, "conv_bn_act")
    torch.manual_seed(0)
    x, weight, bias, residual = inputs((2, 18, 36, 8, 12, 3, 2, 1, True, True), torch.float32, device, layout)
    torch.library.opcheck(torch.ops.hrnet_fast.conv_bn_act.default, (x, weight, bias, residual, 2, 1, True, backend))


@pytest.mark.parametrize("backend", ("torch", "cpu"))
def test_torch_compile_fullgraph(backend):
    """A small graph of both ops compiles without graph breaks and gives the eager result."""
    device = backend_device(backend, "conv_bn_act")
    backend_device(backend, "multires_fuse")
    torch.manual_seed(0)
    x, weight, bias, residual = inputs((2, 18, 18, 8, 12, 3, 1, 1, True, True), torch.float32, device,
                                       "channels_last")
    low = torch.randn(2, 18, 4, 6, device=device)

    def block(x, residual, low):
        y = ops.conv_bn_act(x, weight, bias, stride=1, padding=1, residual=residual, backend=backend)
        return ops.multires_fuse(y, [low], relu=True, backend=backend)

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(x, residual, low), block(x, residual, low), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("backend", ("triton", "cuda"))
def test_gpu_hrnet_shapes(backend, dtype, layout):
    """Real compiles and autotuning on HRNet-W18 conv shapes at 224x224, batch 4 (stem, branches, transitions)."""
    device = backend_device(backend, "conv_bn_act")
    torch.manual_seed(0)
    for case in ((4, 3, 64, 224, 224, 3, 2, 1, False, True), (4, 64, 64, 112, 112, 3, 2, 1, False, True),
                 (4, 18, 18, 56, 56, 3, 1, 1, True, True), (4, 36, 36, 28, 28, 3, 1, 1, True, True),
                 (4, 144, 144, 7, 7, 3, 1, 1, True, True), (4, 256, 64, 56, 56, 1, 1, 0, False, True),
                 (4, 72, 18, 14, 14, 1, 1, 0, False, False), (4, 18, 36, 56, 56, 3, 2, 1, False, True)):
        x, weight, bias, residual = inputs(case, dtype, device, layout)
        _, _, _, _, _, _, stride, padding, _, relu = case
        y = ops.conv_bn_act(x, weight, bias, stride=stride, padding=padding, residual=residual, relu=relu,
                            backend=backend)
        assert y.is_contiguous(memory_format=expected_format(layout))
        assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=stride, padding=padding,
                                 residual=residual, relu=relu)
