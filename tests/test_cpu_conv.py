"""cpu_conv: conv_bn_act on CPU (oneDNN's fused post-op convolution, or ATen's convolution + in-place epilogue),
unpacked and prepacked, against the float64 reference on awkward shapes, dtypes and layouts, on this CPU's
paths and on those of CPUs with and without native float16/bfloat16; which path runs."""
from __future__ import annotations

import pytest
import torch

from cpu_paths import PATHS, REDUCED, take_path
from hrnet_fast.ops import cpu_conv
from hrnet_fast.ops.reference import conv_bn_act_ref
from tolerance import assert_matches_reference

LAYOUTS = ("nchw", "channels_last", "strided")

# (N, Cin, Cout, H, W, k, stride, padding)
CASES = (
    (1, 18, 18, 56, 56, 3, 1, 1),     # HRNet-W18 branch 1 at batch 1
    (3, 36, 72, 13, 17, 3, 2, 1),     # odd size, downsampling
    (0, 18, 36, 8, 8, 3, 1, 1),       # empty batch
    (1, 3, 18, 7, 7, 3, 2, 0),        # RGB-like input, no padding
    (2, 144, 18, 7, 7, 1, 1, 0),      # fusion-layer 1x1 up-projection
    (1, 72, 144, 14, 14, 1, 2, 0),    # strided 1x1
    (2, 5, 1, 3, 4, 3, 1, 0),         # one output channel, 1x2 output: both read as NCHW and NHWC
    (1, 36, 36, 64, 48, 3, 1, 1),     # pose-like crop
)


def case_id(case) -> str:
    n, cin, cout, h, w, k, s, p = case
    return f"{n}x{cin}x{h}x{w}-{k}x{k}s{s}p{p}-to{cout}"


def make(shape, dtype, layout) -> torch.Tensor:
    n, c, h, w = shape
    if layout == "strided":
        return torch.randn(n, 2 * c, h, w + 3).to(dtype)[:, ::2, :, 3:]
    t = torch.randn(n, c, h, w).to(dtype)
    return t.to(memory_format=torch.channels_last) if layout == "channels_last" else t


def conv_inputs(case, dtype, layout, residual):
    n, cin, cout, h, w, k, stride, padding = case
    x = make((n, cin, h, w), dtype, layout)
    weight = (torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5).to(dtype)
    bias = torch.randn(cout).to(dtype)
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    r = make((n, cout, ho, wo), dtype, layout) if residual else None
    return x, weight, bias, r


def expected_format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


# float32 takes one path on every CPU; float16/bfloat16 also take the paths of a CPU that computes them natively
# and of one that does not (cpu_paths.take_path), on the shapes below 50x50 (eager float16 is slow on CPU).
GRID = [(dtype, path, case) for dtype in (torch.float32,) + REDUCED for path in PATHS for case in CASES
        if path == "machine" or (dtype != torch.float32 and case[3] * case[4] < 2500)]


@pytest.mark.parametrize("packed", (False, True), ids=("unpacked", "packed"))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype,path,case", GRID, ids=[f"{str(d)[6:]}-{p}-{case_id(c)}" for d, p, c in GRID])
def test_matches_reference(monkeypatch, dtype, path, case, layout, packed):
    take_path(monkeypatch, path)
    torch.manual_seed(0)
    stride, padding = case[6], case[7]
    for residual, relu in ((True, True), (False, True), (True, False), (False, False)):
        x, weight, bias, r = conv_inputs(case, dtype, layout, residual)
        w = weight
        if packed and cpu_conv.pack_weight(weight, stride, padding, x.shape) is not None:
            w = cpu_conv.pack_weight(weight, stride, padding, x.shape)
        y = cpu_conv.conv_bn_act(x, w, bias, stride=stride, padding=padding, residual=r, relu=relu)
        assert y.dtype == dtype
        assert y.is_contiguous(memory_format=expected_format(x))
        assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=stride, padding=padding, residual=r,
                                 relu=relu)


def test_no_bias_and_a_sliced_bias():
    """oneDNN reads the bias as dense memory: a strided bias view must be made dense first."""
    torch.manual_seed(0)
    x = make((1, 18, 16, 16), torch.float32, "channels_last")
    weight = torch.randn(36, 18, 3, 3) / 12
    sliced = torch.randn(72)[::2]
    for bias in (None, sliced):
        y = cpu_conv.conv_bn_act(x, weight, bias, stride=1, padding=1, relu=True)
        assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=1, padding=1, relu=True)


@pytest.mark.parametrize("layout,k,onednn", [("channels_last", 3, True), ("nchw", 3, False),
                                              ("channels_last", 1, False), ("strided", 3, False)])
def test_path_choice(monkeypatch, layout, k, onednn):
    """oneDNN's fused primitive for 3x3 on channels_last input; ATen's convolution + epilogue otherwise."""
    if onednn and not cpu_conv._onednn_ops():
        pytest.skip("this torch has no oneDNN fused convolution")
    calls = []
    real = cpu_conv.onednn_fused
    monkeypatch.setattr(cpu_conv, "onednn_fused", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = make((1, 18, 14, 14), torch.float32, layout)
    weight, bias = torch.randn(18, 18, k, k), torch.randn(18)
    cpu_conv.conv_bn_act(x, weight, bias, stride=1, padding=k // 2, residual=torch.randn(1, 18, 14, 14), relu=True)
    packed = cpu_conv.pack_weight(weight, 1, k // 2, x.shape)
    cpu_conv.conv_bn_act(x, weight if packed is None else packed, bias, stride=1, padding=k // 2, relu=True)
    assert len(calls) == (2 if onednn else 0)


def test_pack_weight_packs_3x3_weights_for_onednn():
    if not cpu_conv._onednn_ops():
        pytest.skip("this torch has no oneDNN fused convolution")
    packed = cpu_conv.pack_weight(torch.randn(36, 18, 3, 3), 2, 1, (1, 18, 56, 56))
    assert packed is not None and packed.is_mkldnn and packed.dtype == torch.float32
    assert tuple(packed.shape) == (36, 18, 3, 3)
    assert cpu_conv.pack_weight(torch.randn(18, 36, 1, 1), 1, 0, (1, 36, 28, 28)) is None


def test_wide_1x1_is_packed_and_matches_reference():
    """Only wide 1x1 convs are worth oneDNN's per-call cost; packed, they run through it and stay exact."""
    if not cpu_conv._onednn_ops():
        pytest.skip("this torch has no oneDNN fused convolution")
    torch.manual_seed(0)
    weight, bias = torch.randn(256, 64, 1, 1) / 8, torch.randn(256)
    packed = cpu_conv.pack_weight(weight, 1, 0, (1, 64, 14, 14))
    assert packed is not None and packed.is_mkldnn
    x = make((2, 64, 14, 14), torch.float32, "channels_last")
    r = make((2, 256, 14, 14), torch.float32, "channels_last")
    y = cpu_conv.conv_bn_act(x, packed, bias, stride=1, padding=0, residual=r, relu=True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=1, padding=0, residual=r, relu=True)


@pytest.mark.parametrize("batch,onednn", ((1, False), (8, True)))
def test_narrow_1x1_goes_to_onednn_from_4m_multiply_adds(monkeypatch, batch, onednn):
    """A fusion-layer 1x1 (72->36 at 14x14: 0.5M multiply-adds an image) stays on ATen's GEMM at batch 1 and runs
    through oneDNN packed at batch 8 (4.1M), where oneDNN is faster; both match the reference."""
    if not cpu_conv._onednn_ops():
        pytest.skip("this torch has no oneDNN fused convolution")
    calls = []
    real = cpu_conv.onednn_fused
    monkeypatch.setattr(cpu_conv, "onednn_fused", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    torch.manual_seed(0)
    weight, bias = torch.randn(36, 72, 1, 1) / 8, torch.randn(36)
    x = make((batch, 72, 14, 14), torch.float32, "channels_last")
    r = make((batch, 36, 14, 14), torch.float32, "channels_last")
    assert (cpu_conv.pack_weight(weight, 1, 0, x.shape) is not None) == onednn
    y = cpu_conv.conv_bn_act(x, weight, bias, stride=1, padding=0, residual=r, relu=True)
    assert len(calls) == int(onednn)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=1, padding=0, residual=r, relu=True)


def test_dense_weight_is_packed_once_and_repacked_after_an_inplace_change(monkeypatch):
    if not cpu_conv._onednn_ops():
        pytest.skip("this torch has no oneDNN fused convolution")
    torch.manual_seed(0)
    packs = []
    real = cpu_conv.pack_weight
    monkeypatch.setattr(cpu_conv, "pack_weight", lambda *a: packs.append(1) or real(*a))
    weight, bias = torch.randn(18, 18, 3, 3) / 12, torch.randn(18)
    x = make((1, 18, 14, 14), torch.float32, "channels_last")
    for _ in range(3):
        y = cpu_conv.conv_bn_act(x, weight, bias, stride=1, padding=1, relu=True)
    assert len(packs) == 1
    assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=1, padding=1, relu=True)
    weight.mul_(-1)  # an in-place change must not be served from the stale packed copy
    y = cpu_conv.conv_bn_act(x, weight, bias, stride=1, padding=1, relu=True)
    assert len(packs) == 2
    assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=1, padding=1, relu=True)


def test_packed_weight_serves_other_batch_sizes_and_nchw():
    """Packed for batch 1 (the layout oneDNN chooses depends on it), run on batch 3, another map size, and on an
    NCHW input (which takes the dense path)."""
    torch.manual_seed(0)
    weight, bias = torch.randn(18, 18, 3, 3) / 12, torch.randn(18)
    packed = cpu_conv.pack_weight(weight, 1, 1, (1, 18, 56, 56))
    for layout in ("channels_last", "nchw"):
        x = make((3, 18, 20, 24), torch.float32, layout)
        r = make((3, 18, 20, 24), torch.float32, layout)
        y = cpu_conv.conv_bn_act(x, packed, bias, stride=1, padding=1, residual=r, relu=True)
        assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=1, padding=1, residual=r, relu=True)


def test_packed_dtype_mismatch_is_an_error(monkeypatch):
    # A weight packed in bfloat16, as on a CPU that computes it natively (elsewhere it is packed in float32).
    take_path(monkeypatch, "native")
    packed = cpu_conv.pack_weight(torch.randn(4, 4, 3, 3).bfloat16(), 1, 1, (1, 4, 8, 8))
    assert packed.dtype == torch.bfloat16
    x = torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    with pytest.raises(TypeError, match="packed for torch.bfloat16 but x"):
        cpu_conv.conv_bn_act(x, packed, None, stride=1, padding=1)


def test_pack_weight_rejects_bad_shapes():
    with pytest.raises(ValueError, match="4-D weight and a 4-D x_shape"):
        cpu_conv.pack_weight(torch.randn(4, 4, 3), 1, 1, (1, 4, 8, 8))


def test_weights_made_under_inference_mode():
    """Inference tensors keep no version counter; the packed-weight cache must not ask them for one."""
    with torch.inference_mode():
        x, weight, bias, r = conv_inputs((1, 18, 24, 12, 10, 3, 1, 1), torch.float32, "channels_last", True)
        assert weight.is_inference() and cpu_conv._packable(weight, 1, 1, x.shape)
        y = cpu_conv.conv_bn_act(x, weight, bias, stride=1, padding=1, residual=r, relu=True)
        again = cpu_conv.conv_bn_act(x, weight, bias, stride=1, padding=1, residual=r, relu=True)
    assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=1, padding=1, residual=r, relu=True)
    assert torch.equal(y, again)
