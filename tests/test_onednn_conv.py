"""OnednnConv: the CPU convolution that keeps its oneDNN primitives, against the float64 reference on awkward
shapes and every dtype, its residual semantics, its checks, several shapes and threads on one layer, and a
converted model running every conv through it."""
from __future__ import annotations

import os
import pickle
import threading

import pytest
import torch
import torch.nn as nn

import hrnet_fast
from hrnet_fast.ops import cpu_conv, extension, onednn_conv
from hrnet_fast.ops.onednn_conv import OnednnConv
from hrnet_fast.ops.reference import conv_bn_act_ref
from test_cpu_conv import CASES, case_id
from tolerance import assert_matches_reference

# Built wherever the install found oneDNN (test_built_where_the_install_has_onednn checks that).
needs_onednn = pytest.mark.skipif(not onednn_conv.available()[0], reason=onednn_conv.available()[1])

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def inputs(case, dtype, residual, seed=0):
    n, cin, cout, h, w, k, stride, padding = case
    g = torch.Generator().manual_seed(seed)
    cl = torch.channels_last
    x = torch.randn(n, cin, h, w, generator=g).to(dtype).contiguous(memory_format=cl)
    weight = (torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5).to(dtype)
    bias = torch.randn(cout, generator=g).to(dtype)
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    r = torch.randn(n, cout, ho, wo, generator=g).to(dtype).contiguous(memory_format=cl) if residual else None
    return x, weight, bias, r


@needs_onednn
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case, dtype, residual, relu):
    x, weight, bias, r = inputs(case, dtype, residual)
    stride, padding = case[6], case[7]
    y = OnednnConv(weight, stride, padding).run(x, bias, r, relu)
    if y is None:  # oneDNN refuses only a reduced precision this CPU does not compute
        assert dtype != torch.float32 and not cpu_conv.native_compute(dtype)
        return
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=stride, padding=padding, residual=r,
                             relu=relu)


def grouped_ref(x, weight, bias, *, stride, padding, groups, residual, relu):
    y = torch.nn.functional.conv2d(x, weight, bias, stride, padding, 1, groups)
    y = y if residual is None else y + residual
    return torch.relu(y) if relu else y


@needs_onednn
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [
    (1, 20, 20, 16, 12, 3, 1, 1, 20),  # Lite-HRNet's depthwise convs: groups == Cin == Cout
    (2, 40, 40, 9, 7, 3, 2, 1, 40),
    (1, 12, 24, 5, 6, 3, 1, 0, 4),  # grouped, several channels in and out per group
], ids=lambda c: "n{}_{}to{}_{}x{}_k{}s{}p{}_g{}".format(*c))
def test_grouped_matches_reference(case, dtype, residual):
    """The weight [Cout, Cin / groups, k, k] (stored channels_last, as converted models keep it) read as oneDNN's
    [groups, Cout / groups, Cin / groups, k, k]."""
    n, cin, cout, h, w, k, stride, padding, groups = case
    g = torch.Generator().manual_seed(1)
    cl = torch.channels_last
    x = torch.randn(n, cin, h, w, generator=g).to(dtype).contiguous(memory_format=cl)
    weight = (torch.randn(cout, cin // groups, k, k, generator=g) / (cin // groups * k * k) ** 0.5).to(dtype)
    bias = torch.randn(cout, generator=g).to(dtype)
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    r = torch.randn(n, cout, ho, wo, generator=g).to(dtype).contiguous(memory_format=cl) if residual else None
    layer = OnednnConv(weight.contiguous(memory_format=cl), stride, padding, groups)
    y = layer.run(x, bias, r, True)
    if y is None:  # oneDNN refuses only a reduced precision this CPU does not compute
        assert dtype != torch.float32 and not cpu_conv.native_compute(dtype)
        return
    assert y.dtype == dtype and y.is_contiguous(memory_format=cl)
    assert_matches_reference(y, grouped_ref, x, weight, bias, stride=stride, padding=padding, groups=groups,
                             residual=r, relu=True)


@needs_onednn
def test_groups_that_do_not_divide_the_output_channels_raise():
    with pytest.raises(RuntimeError, match="does not divide"):
        OnednnConv(torch.randn(6, 2, 3, 3), 1, 1, 4)


@needs_onednn
@pytest.mark.parametrize("free", [False, True], ids=["held", "free"])
def test_residual_summed_in_place_only_when_free(free):
    x, weight, bias, r = inputs((2, 16, 24, 9, 7, 3, 1, 1), torch.float32, True)
    before = r.clone()
    y = OnednnConv(weight, 1, 1).run(x, bias, r, True, residual_is_free=free)
    assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=1, padding=1, residual=before, relu=True)
    assert (y.data_ptr() == r.data_ptr()) == free
    if not free:
        assert torch.equal(r, before)


@needs_onednn
def test_weight_in_any_dense_layout_and_several_shapes_on_one_layer():
    """The stored weight is read with its own strides (converted models store it channels_last); each input
    shape gets its own primitive, and a shape seen before reuses its primitive with the same answer."""
    _, weight, bias, _ = inputs((1, 18, 36, 8, 8, 3, 2, 1), torch.float32, False)
    layer = OnednnConv(weight.contiguous(memory_format=torch.channels_last), 2, 1)
    for n, h, w in ((1, 8, 8), (3, 13, 17), (1, 8, 8)):
        x = torch.randn(n, 18, h, w).contiguous(memory_format=torch.channels_last)
        y = layer.run(x, bias, None, True)
        assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=2, padding=1, relu=True)
        assert torch.equal(y, layer.run(x, bias, None, True))


@needs_onednn
def test_kept_primitives_are_bounded_for_many_input_sizes():
    """A segmentation model fed many sizes: at most 16 shapes' primitives are kept, the rest made again."""
    _, weight, bias, _ = inputs((1, 8, 16, 4, 4, 3, 1, 1), torch.float32, False)
    layer = OnednnConv(weight, 1, 1)
    sizes = [(5 + i, 7 + i % 3) for i in range(20)] + [(5, 7)]
    for h, w in sizes:
        x = torch.randn(1, 8, h, w).contiguous(memory_format=torch.channels_last)
        y = layer.run(x, bias, None, True)
        assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, stride=1, padding=1, relu=True)
        assert 1 <= layer.plans <= 16
    assert layer.plans < 16  # dropped once past the bound, then made again


@needs_onednn
def test_concurrent_calls_on_one_layer():
    _, weight, bias, _ = inputs((1, 32, 32, 16, 16, 3, 1, 1), torch.float32, False)
    layer = OnednnConv(weight, 1, 1)
    xs = [torch.randn(2, 32, 16, 12).contiguous(memory_format=torch.channels_last) for _ in range(4)]
    expected = [layer.run(x, bias, None, True) for x in xs]
    results = {}

    def work(i):
        for _ in range(20):
            results[i] = layer.run(xs[i], bias, None, True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert torch.equal(results[i], expected[i])


@needs_onednn
@pytest.mark.parametrize("problem", ["nchw", "dtype", "requires grad", "subclass", "dispatch mode"])
def test_calls_it_does_not_take_return_none(problem):
    """None sends the caller to its general path (the registered op), which handles or names these."""
    x, weight, bias, r = inputs((1, 16, 24, 6, 5, 3, 1, 1), torch.float32, True)
    layer = OnednnConv(weight, 1, 1)
    if problem == "nchw":
        x = x.contiguous()
    elif problem == "dtype":
        x = x.double()
    elif problem == "requires grad":
        x.requires_grad_(True)
    elif problem == "subclass":
        x = x.as_subclass(Marked)
    if problem == "dispatch mode":
        with torch.utils._python_dispatch.TorchDispatchMode():
            assert layer.run(x, bias, r, True) is None
    else:
        assert layer.run(x, bias, r, True) is None


class Marked(torch.Tensor):
    """A tensor subclass: the dispatcher would run its __torch_function__ first."""


@needs_onednn
@pytest.mark.parametrize("problem, message", [
    ("channels", r"\[N, 16, H, W\]"),
    ("bias", r"bias must be a dense \[24\]"),
    ("residual", "residual is"),
    ("small", "too small for a 3x3 kernel"),
])
def test_bad_calls_raise_naming_the_problem(problem, message):
    x, weight, bias, r = inputs((1, 16, 24, 6, 5, 3, 1, 0), torch.float32, True)
    layer = OnednnConv(weight, 1, 0)
    if problem == "channels":
        x = torch.randn(1, 8, 6, 5).contiguous(memory_format=torch.channels_last)
    elif problem == "bias":
        bias = bias[:5]
    elif problem == "residual":
        r = r[:, :, :2]
    elif problem == "small":
        x = torch.randn(1, 16, 2, 5).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match=message):
        layer.run(x, bias, r, True)


@needs_onednn
def test_is_not_picklable():
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(OnednnConv(torch.randn(4, 4, 1, 1), 1, 0))


@needs_onednn
def test_converted_model_runs_every_conv_through_it():
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(hrnet_fast.create_model("hrnet_w18_small"), (64, 64), steps=1, batch=2).eval()
    fast = hrnet_fast.convert(model)
    x = torch.randn(1, 3, 64, 64)
    # The first call lists the steps; the second, the first replayed one, decides the automatic branch schedule by
    # timing both (with 2+ threads). The forward counted is the one after those.
    fast(x), fast(x)
    with torch.profiler.profile() as prof:
        fast(x)
    calls = {e.key: e.count for e in prof.key_averages()}
    fused = sum(type(m).__name__ == "FusedConvBNAct" for m in fast.modules())
    assert calls.get("hrnet_fast_C::onednn_conv") == fused
    assert not any(k.startswith("mkldnn::") or k in ("aten::convolution", "aten::mkldnn_convolution") for k in calls)


def test_built_where_the_install_has_onednn():
    """A build that missed the oneDNN the install put beside it would skip every test above: fail instead."""
    prefix, why = extension.onednn_toolkit()
    if prefix is not None and os.environ.get("HRNET_FAST_NO_ONEDNN") != "1":
        assert onednn_conv.available()[0], onednn_conv.available()[1]
    else:
        assert not onednn_conv.available()[0] and why


def test_toolkit_search_says_why_not(tmp_path, monkeypatch):
    monkeypatch.setenv("HRNET_FAST_ONEDNN_ROOT", str(tmp_path))
    assert extension.onednn_toolkit() == (None, f"no oneDNN headers and library under {tmp_path} (pip install "
                                                f"onednn-devel-cpu-gomp onednn-cpu-gomp, or set "
                                                f"HRNET_FAST_ONEDNN_ROOT)")
    monkeypatch.setenv("HRNET_FAST_NO_ONEDNN", "1")
    assert extension.onednn_toolkit() == (None, "HRNET_FAST_NO_ONEDNN=1")
    assert onednn_conv.available() == (False, "HRNET_FAST_NO_ONEDNN=1")
    monkeypatch.delenv("HRNET_FAST_NO_ONEDNN")
    monkeypatch.delenv("HRNET_FAST_ONEDNN_ROOT")
    prefix, _ = extension.onednn_toolkit()
    assert prefix is not None and os.path.isfile(os.path.join(prefix, "include", "oneapi", "dnnl", "dnnl.hpp"))


@needs_onednn
def test_one_openmp_runtime_in_the_process():
    """oneDNN's library and torch's CPU ops share one GNU OpenMP runtime (the wheel is built on libgomp, whose
    soname torch already loaded), never two."""
    onednn_conv.available()
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "libgomp" in line or "libiomp" in line or "libomp" in line}
    assert len(libs) == 1, libs
    assert any("libdnnl" in line for line in open("/proc/self/maps"))


def test_switched_off_converted_models_take_atens_path(monkeypatch):
    monkeypatch.setenv("HRNET_FAST_NO_ONEDNN", "1")
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(hrnet_fast.create_model("hrnet_w18_small"), (64, 64), steps=1, batch=2).eval()
    fast = hrnet_fast.convert(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.profiler.profile() as prof:
        fast(x)
    calls = {e.key for e in prof.key_averages()}
    assert "hrnet_fast_C::onednn_conv" not in calls and "mkldnn::_convolution_pointwise" in calls
