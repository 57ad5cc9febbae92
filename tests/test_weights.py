"""Conv weights stored once in the layout their backend reads (hrnet_fast/ops/weights.py): what a converted model
stores, what each backend is handed, when a prepared form is rebuilt, and that the native op's layout step copies
no weight that is already in the input's layout."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch

import hrnet_fast
from hrnet_fast.convert import fused
from hrnet_fast.convert.fused import FusedConvBNAct
from hrnet_fast.ops import backends, extension, weights
from hrnet_fast.ops.reference import conv_bn_act_ref

SIZE = (64, 64)


def converted(**kwargs):
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(hrnet_fast.create_model("hrnet_w18_small"), SIZE, steps=1, batch=2)
    return model, hrnet_fast.convert(model, **kwargs)


def fused_convs(fast):
    return [m for m in fast.modules() if isinstance(m, FusedConvBNAct)]


def test_weights_are_stored_in_the_activation_layout():
    _, fast = converted()
    convs = fused_convs(fast)
    three = [m.weight for m in convs if m.weight.shape[-1] == 3]
    assert three and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                         for w in three)
    _, nchw = converted(channels_last=False)
    assert all(m.weight.is_contiguous() for m in fused_convs(nchw))
    back = hrnet_fast.convert(nchw, channels_last=True)  # new run options for a converted model: weights follow
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
               for m in fused_convs(back) if m.weight.shape[-1] == 3)


@pytest.fixture
def fake_cuda_backend(monkeypatch):
    """Routes conv_bn_act of CPU tensors to the name "cuda" (so the cuda backend's weight preparation runs) and
    records every weight its implementation is handed; the computation is the reference's."""
    handed = []

    def record(x, weight, bias, *, stride, padding, residual, relu):
        handed.append(weight)
        return conv_bn_act_ref(x, weight, bias, stride=stride, padding=padding, residual=residual, relu=relu)

    real_resolve, real_impl = fused.resolve, backends.implementation
    monkeypatch.setattr(fused, "resolve", lambda op, dev, b: "cuda" if op == "conv_bn_act" else real_resolve(op, dev, b))
    monkeypatch.setattr(backends, "implementation",
                        lambda op, b: record if (op, b) == ("conv_bn_act", "cuda") else real_impl(op, b))
    return handed


def test_cuda_backend_is_handed_the_stored_weight_on_every_call(fake_cuda_backend):
    model, fast = converted(backend="torch")
    convs = fused_convs(fast)
    stored = {m.weight.data_ptr() for m in convs}
    x = torch.randn(1, 3, *SIZE)
    y = [fast(x) for _ in range(2)]
    assert len(fake_cuda_backend) == 2 * len(convs)
    # The very tensors the model stores: no per-call copy into another layout, none made once either.
    assert {w.data_ptr() for w in fake_cuda_backend} == stored
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in fake_cuda_backend)
    torch.testing.assert_close(y[0], y[1], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(y[0], model(x), rtol=1e-4, atol=1e-4)


def test_a_weight_in_another_layout_is_converted_once(fake_cuda_backend):
    """load_state_dict(assign=True) with NCHW weights: the cuda backend gets one channels_last copy per weight,
    made on the first call and reused."""
    _, fast = converted(backend="torch")
    sd = {k: v.contiguous() for k, v in fast.state_dict().items()}
    fast.load_state_dict(sd, assign=True)
    convs = fused_convs(fast)
    assert any(not m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    x = torch.randn(1, 3, *SIZE)
    fast(x)
    first = [w.data_ptr() for w in fake_cuda_backend]
    fake_cuda_backend.clear()
    fast(x)
    assert [w.data_ptr() for w in fake_cuda_backend] == first
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in fake_cuda_backend)


@pytest.fixture
def counting_preparer(monkeypatch):
    built = []

    def prepare(weight, *, stride, padding, channels_last, x_shape, groups):
        built.append(weight)
        return weight * 2  # a distinguishable "prepared" form

    monkeypatch.setattr(weights, "preparer", lambda backend: prepare)
    return built


def test_prepared_weight_is_rebuilt_exactly_when_the_weight_changes(counting_preparer):
    cache = weights.PreparedWeight()
    w = torch.randn(4, 4, 3, 3)
    kw = dict(stride=1, padding=1, channels_last=True, x_shape=(1, 4, 8, 8))
    first = cache.get("cuda", w, **kw)
    torch.testing.assert_close(first, w * 2)
    assert cache.get("cuda", w, **kw) is first and len(counting_preparer) == 1
    w.mul_(-1)  # written in place (load_state_dict without assign)
    torch.testing.assert_close(cache.get("cuda", w, **kw), w * 2)
    assert len(counting_preparer) == 2
    moved = w.to(torch.float64)  # cast: new memory, new dtype
    torch.testing.assert_close(cache.get("cuda", moved, **kw), moved * 2)
    replaced = moved.clone()  # same dtype and device, another tensor (assign=True)
    cache.get("cuda", replaced, **kw)
    cache.get("triton", replaced, **kw)  # another backend
    assert len(counting_preparer) == 5


def test_prepared_weight_is_not_copied_or_pickled():
    cache = weights.PreparedWeight()
    w = torch.randn(4, 4, 3, 3)
    cache.get("torch", w, stride=1, padding=1, channels_last=True, x_shape=(1, 4, 8, 8))
    assert cache._value is not None
    for clone in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        assert clone._key is None and clone._value is None


def test_loading_new_weights_in_place_reaches_the_cpu_backend():
    """A CPU model packs its 3x3 weights for oneDNN on the first call; load_state_dict (an in-place copy) must not
    leave it running the old packed weights."""
    _, fast = converted(backend="cpu")
    torch.manual_seed(1)
    other_model = hrnet_fast.calibrate_bn(hrnet_fast.create_model("hrnet_w18_small"), SIZE, steps=1, batch=2)
    other = hrnet_fast.convert(other_model, backend="cpu")
    x = torch.randn(1, 3, *SIZE)
    before = fast(x)
    fast.load_state_dict(other.state_dict())
    after = fast(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, other(x), rtol=1e-5, atol=1e-5)


def test_converted_model_copies_and_pickles_after_running():
    _, fast = converted(backend="cpu")
    x = torch.randn(1, 3, *SIZE)
    y = fast(x)
    for clone in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        torch.testing.assert_close(clone(x), y, rtol=0, atol=0)


def _layout_ops(weight: torch.Tensor, x: torch.Tensor):
    """The ops the native conv_bn_act runs before its convolution (its layout step, shared by the CPU and CUDA
    registrations in csrc/ops.cpp)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.ops.hrnet_fast_C.conv_bn_act(x, weight, None, None, 1, 1, True)
    names = [e.name for e in prof.events()]
    return names[names.index("hrnet_fast_C::conv_bn_act") + 1:names.index("aten::convolution")]


def test_native_op_copies_no_weight_already_in_the_input_layout():
    if extension.module() is None:
        pytest.skip("the compiled extension is not built")
    x = torch.randn(1, 18, 14, 14).contiguous(memory_format=torch.channels_last)
    w = torch.randn(18, 18, 3, 3)
    assert "aten::clone" not in _layout_ops(weights.stored_weight(w, channels_last=True), x)
    assert "aten::clone" in _layout_ops(w, x)  # an NCHW weight is copied on every call: what storing avoids
