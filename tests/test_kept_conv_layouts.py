"""Converted convolutions on CPU keep their oneDNN primitives for every layout a model's own code hands them, and
for grouped (depthwise) convolutions: Lite-HRNet's blocks end in a channel shuffle whose ``.contiguous()`` makes
NCHW maps and split channels into strided halves, and 96 of its convs are depthwise. Before, each of those convs
took ATen's per-call convolution (about 250 a Lite-HRNet-18 forward). Outputs are compared with the float64
reference (tolerance.py) or the model's own eager forward."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hrnet_fast
from hrnet_fast.convert.fused import FoldedConv, FusedConvBNAct
from hrnet_fast.ops import onednn_conv
from lite_hrnet import LITE_HRNET_18, LiteHRNetPose
from tolerance import assert_matches_reference, assert_model_matches

needs_onednn = pytest.mark.skipif(not onednn_conv.available()[0], reason=onednn_conv.available()[1])
ATEN_CONVS = ("aten::convolution", "aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::thnn_conv2d")


def conv_ref(x, weight, bias, *, stride, padding, groups, residual, relu):
    y = F.conv2d(x, weight, bias, stride, padding, 1, groups)
    y = y if residual is None else y + residual
    return torch.relu(y) if relu else y


def op_calls(f, *args):
    with torch.profiler.profile() as prof:
        f(*args)
    return {e.key: e.count for e in prof.key_averages()}


def layouts(x):
    """The same map channels_last, NCHW (what a shuffle's ``.contiguous()`` makes) and as a strided channel half of
    a wider channels_last map (what ``chunk(2, dim=1)`` gives)."""
    wide = torch.cat([x, torch.randn_like(x)], dim=1).contiguous(memory_format=torch.channels_last)
    return {"channels_last": x.contiguous(memory_format=torch.channels_last), "nchw": x.contiguous(),
            "channel half": wide[:, :x.shape[1]]}


def folded(conv, relu, bias=True):
    bn = nn.BatchNorm2d(conv.out_channels).eval() if bias else None
    if bn is not None:
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5)
    m = FoldedConv(conv, bn, relu, torch.float32)
    m.set_activation_layout(True)
    return m


@needs_onednn
@pytest.mark.parametrize("layout", ["channels_last", "nchw", "channel half"])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_folded_conv_runs_kept_primitives_for_any_input_layout(layout, stride):
    torch.manual_seed(0)
    m = folded(nn.Conv2d(20, 20, 3, stride, 1, groups=20, bias=False), relu=False)
    x = layouts(torch.randn(1, 20, 15, 12))[layout]
    calls = op_calls(m, x)
    assert calls.get("hrnet_fast_C::onednn_conv") == 1 and not any(k in calls for k in ATEN_CONVS), calls
    y = m(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_matches_reference(y, conv_ref, x, m.conv.weight, m.conv.bias, stride=stride, padding=1, groups=20,
                             residual=None, relu=False)


@needs_onednn
@pytest.mark.parametrize("free", [False, True], ids=["held", "free"])
def test_folded_conv_without_bias_sums_residual_and_relu_in_its_epilogue(free):
    torch.manual_seed(0)
    m = folded(nn.Conv2d(12, 24, 3, 1, 1, groups=4, bias=False), relu=True, bias=False)
    x = torch.randn(2, 12, 9, 7).contiguous(memory_format=torch.channels_last)
    r = torch.randn(2, 24, 9, 7).contiguous(memory_format=torch.channels_last)
    before = r.clone()
    y = m(x, residual=r, residual_is_free=free)
    assert_matches_reference(y, conv_ref, x, m.conv.weight, None, stride=1, padding=1, groups=4, residual=before,
                             relu=True)
    assert (y.data_ptr() == r.data_ptr()) == free


@needs_onednn
def test_folded_conv_on_the_torch_backend_or_nchw_activations_runs_the_plain_conv():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 6, 6)
    for backend, channels_last in (("torch", True), (None, False)):
        m = FoldedConv(nn.Conv2d(8, 8, 3, 1, 1, groups=8), None, False, torch.float32, backend)
        m.set_activation_layout(channels_last)
        calls = op_calls(m, x)
        assert "hrnet_fast_C::onednn_conv" not in calls and "aten::convolution" in calls, (backend, calls)


@needs_onednn
@pytest.mark.parametrize("layout", ["nchw", "channel half"])
def test_fused_conv_takes_other_layouts_into_its_kept_primitives(layout):
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24).eval()
    m = FusedConvBNAct(conv, bn, True, torch.float32, None)
    x = layouts(torch.randn(1, 16, 10, 8))[layout]
    m(x.contiguous(memory_format=torch.channels_last))  # first call: the kept primitives are made
    calls = op_calls(m, x)
    assert calls.get("hrnet_fast_C::onednn_conv") == 1 and not any(k in calls for k in ATEN_CONVS), calls
    y = m(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_matches_reference(y, conv_ref, x, m.weight, m.bias, stride=1, padding=0, groups=1, residual=None,
                             relu=True)


@pytest.fixture(scope="module")
def lite_pair():
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(LiteHRNetPose(LITE_HRNET_18), (64, 64), steps=2, batch=2).eval()
    return model, hrnet_fast.convert(model)


def conv_calls_per_forward(fast, x):
    """How many times the fused and folded convs are called in one forward (some fusion terms run twice: the
    module's forward starts an output's sum from its first term and adds that term again)."""
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in fast.modules()
             if isinstance(m, (FusedConvBNAct, FoldedConv))]
    try:
        fast(x)
    finally:
        for h in hooks:
            h.remove()
    return len(calls)


@needs_onednn
def test_lite_hrnet_runs_every_conv_on_kept_primitives(lite_pair):
    model, fast = lite_pair
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    depthwise = [m for m in fast.modules() if isinstance(m, FoldedConv) and m.conv.groups == m.conv.in_channels > 1]
    assert len(depthwise) == 96
    fast(x)
    calls = op_calls(fast, x)
    assert calls.get("hrnet_fast_C::onednn_conv") == conv_calls_per_forward(fast, x) > 200, calls
    assert not any(k in calls for k in ATEN_CONVS), {k: calls[k] for k in ATEN_CONVS if k in calls}
    assert_model_matches(model, fast, x, decision=lambda y: y.flatten(2).argmax(-1))


@needs_onednn
def test_lite_hrnet_kept_primitives_after_a_backend_change_are_dropped(lite_pair):
    """convert(fast, backend="torch"): the depthwise convs' kept primitives were built for the cpu backend."""
    model, fast = lite_pair
    x = torch.randn(1, 3, 64, 64)
    fast(x)
    on_torch = hrnet_fast.convert(fast, backend="torch")
    assert "hrnet_fast_C::onednn_conv" not in op_calls(on_torch, x)
    assert_model_matches(model, on_torch, x, decision=lambda y: y.flatten(2).argmax(-1))
