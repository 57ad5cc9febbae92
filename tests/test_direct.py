"""The eager CPU entry point of multires_fuse (hrnet_fast._C.multires_fuse_cpu, hrnet_fast/ops/direct.py): it gives
the registered op's results bit for bit where it runs, and declines (returns None) wherever the dispatcher would do
something else, so that the public op then takes the registered path."""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import hrnet_fast.ops as ops
from hrnet_fast.ops import direct, extension
from hrnet_fast.ops.reference import multires_fuse_ref

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Recorder(TorchDispatchMode):
    """Records the name of every op dispatched under it."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def entry():
    """hrnet_fast._C.multires_fuse_cpu, or a skip saying why the extension is not built."""
    loaded, why = extension.loaded()
    if not loaded:
        pytest.skip(why)
    return extension.module().multires_fuse_cpu


def fuse_inputs(dtype=torch.float32, layout=torch.contiguous_format, n=2):
    torch.manual_seed(0)

    def mk(*shape):
        return torch.randn(*shape).to(dtype).contiguous(memory_format=layout)
    return mk(n, 18, 16, 24), [mk(n, 18, 8, 12), mk(n, 18, 2, 3)], [mk(n, 18, 16, 24), mk(n, 18, 16, 24)]


MODES = (("nearest", False), ("bilinear", False), ("bilinear", True))


@pytest.mark.parametrize("mode, align_corners", MODES, ids=("nearest", "bilinear", "bilinear-align_corners"))
@pytest.mark.parametrize("layout", (torch.contiguous_format, torch.channels_last), ids=("nchw", "channels_last"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_same_bits_as_the_registered_op(entry, dtype, layout, mode, align_corners):
    x, low, same = fuse_inputs(dtype, layout)
    if mode == "bilinear":
        low.append(torch.randn(2, 18, 7, 13).to(dtype).contiguous(memory_format=layout))  # ragged: any size <= x's
    for relu in (True, False):
        out = entry(x, low, same, relu, mode, align_corners)
        assert out is not None, "plain CPU tensors must take the direct path"
        expected = torch.ops.hrnet_fast.multires_fuse(x, low, same, relu, mode, align_corners, "cpu")
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        assert out.is_contiguous(memory_format=layout)
        assert out.dtype == dtype


def test_public_op_result_and_tuples(entry):
    x, low, same = fuse_inputs()
    out = ops.multires_fuse(x, tuple(low), tuple(same))
    torch.testing.assert_close(out, multires_fuse_ref(x, low, same), rtol=0, atol=0)
    assert entry(x, tuple(low), tuple(same), True, "nearest", False) is not None


def test_runs_in_inference_mode_and_under_no_grad(entry):
    with torch.inference_mode():
        x, low, same = fuse_inputs()
        assert entry(x, low, same, True, "nearest", False) is not None
    x, low, same = fuse_inputs()
    x.requires_grad_()
    with torch.no_grad():
        assert entry(x, low, same, True, "nearest", False) is not None


def test_empty_batch(entry):
    x, low, same = fuse_inputs(n=0)
    out = entry(x, low, same, True, "nearest", False)
    assert out is not None and out.shape == x.shape


@pytest.mark.parametrize("bad, error", [("dtype", TypeError), ("shape", ValueError), ("factor", ValueError),
                                        ("too_many", ValueError), ("not_a_tensor", TypeError),
                                        ("device_mix", ValueError), ("not_a_list", ValueError)])
def test_declines_input_the_op_rejects(entry, bad, error):
    """Bad input returns None, and the public op raises the checks' clear error for it."""
    x, low, same = fuse_inputs()
    if bad == "dtype":
        same[0] = same[0].double()
    elif bad == "shape":
        same[0] = same[0][:, :, :-1]
    elif bad == "factor":
        low[0] = torch.randn(2, 18, 5, 7)
    elif bad == "too_many":
        same = same * 3
    elif bad == "not_a_tensor":
        same[0] = 1.0
    elif bad == "device_mix":
        same[0] = same[0].to("meta")
    else:
        same = same[0]
    assert entry(x, low, same, True, "nearest", False) is None
    with pytest.raises(error):
        ops.multires_fuse(x, low, same)


@pytest.mark.parametrize("mode, align_corners, error", [
    ("bicubic", False, ValueError),        # a mode the op does not take
    ("nearest", True, ValueError),         # align_corners only with bilinear
    ("bilinear", 1, TypeError),            # align_corners not a bool
    (b"bilinear", False, ValueError),      # mode not a str
], ids=("unknown mode", "align_corners with nearest", "align_corners not a bool", "mode not a str"))
def test_declines_modes_the_op_rejects(entry, mode, align_corners, error):
    x, low, same = fuse_inputs()
    assert entry(x, low, same, True, mode, align_corners) is None
    with pytest.raises(error):
        ops.multires_fuse(x, low, same, mode=mode, align_corners=align_corners)


def test_declines_bilinear_input_larger_than_x(entry):
    x, low, same = fuse_inputs()
    low[0] = torch.randn(2, 18, 17, 3)
    assert entry(x, low, same, True, "bilinear", False) is None
    with pytest.raises(ValueError, match=r"low_res\[0\] is 17x3 and x is 16x24"):
        ops.multires_fuse(x, low, same, mode="bilinear")


def test_declines_what_needs_autograd(entry):
    x, low, same = fuse_inputs()
    low[1].requires_grad_()
    assert entry(x, low, same, True, "nearest", False) is None


def test_declines_subclasses_and_non_cpu_tensors(entry):
    x, low, same = fuse_inputs()

    class Subclass(torch.Tensor):
        pass
    assert entry(x.as_subclass(Subclass), low, same, True, "nearest", False) is None
    assert entry(x, [low[0].as_subclass(Subclass)], same, True, "nearest", False) is None
    meta = [z.to("meta") for z in low], [d.to("meta") for d in same]
    assert entry(x.to("meta"), *meta, True, "nearest", False) is None
    assert entry(x.to_sparse(), [], [], True, "nearest", False) is None


def test_declines_under_modes(entry):
    x, low, same = fuse_inputs()

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    class FunctionPassthrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))
    with Passthrough():
        assert entry(x, low, same, True, "nearest", False) is None
    with FunctionPassthrough():
        assert entry(x, low, same, True, "nearest", False) is None
    assert entry(x, low, same, True, "nearest", False) is not None


def test_dispatch_modes_see_the_registered_op():
    """Op counting and tracing rely on the op passing through the dispatcher under a mode."""
    x, low, same = fuse_inputs()
    with Recorder() as recorder:
        ops.multires_fuse(x, low, same)
    assert "hrnet_fast.multires_fuse" in recorder.seen


def test_declines_inside_vmap(entry):
    x, low, same = fuse_inputs()
    results = []

    def fn(xi):
        results.append(entry(xi, [], [], True, "nearest", False))
        return xi.relu()
    torch.vmap(fn)(x)
    assert results == [None]


def test_only_cpu_and_default_backends_go_direct():
    x, low, same = fuse_inputs()
    assert direct.multires_fuse(x, low, same, True, "torch") is None
    assert direct.multires_fuse(x, low, same, True, "triton") is None
    assert direct.multires_fuse(1.0, low, same, True, None) is None


def test_cpu_and_default_backends_go_direct(entry):
    x, low, same = fuse_inputs()
    for backend in (None, "cpu"):
        out = direct.multires_fuse(x, low, same, True, backend)
        assert out is not None
        torch.testing.assert_close(out, multires_fuse_ref(x, low, same), rtol=0, atol=0)
        out = direct.multires_fuse(x, low, same, True, backend, mode="bilinear", align_corners=True)
        assert out is not None
        torch.testing.assert_close(out, multires_fuse_ref(x, low, same, mode="bilinear", align_corners=True))


def test_inputs_requiring_grad_work_under_no_grad():
    """Grad-requiring inputs are refused only where autograd would differentiate the output."""
    x, low, same = fuse_inputs()
    x.requires_grad_()
    weight = torch.randn(18, 18, 3, 3, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(ops.multires_fuse(x, low, same), multires_fuse_ref(x, low, same), rtol=0, atol=0)
        y = ops.conv_bn_act(x, weight, None, padding=1)
    assert y.shape == x.shape and not y.requires_grad


def test_public_conv_under_a_mode_goes_through_the_registered_op():
    x = torch.randn(1, 18, 8, 8).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(36, 18, 3, 3)
    with Recorder() as recorder:
        ops.conv_bn_act(x, weight, None, padding=1)
    assert recorder.seen == ["hrnet_fast.conv_bn_act"]
    assert direct.plain_eager_call(x, weight, None)
    assert not direct.plain_eager_call(x, weight.requires_grad_(), None)
    with torch.no_grad():
        assert direct.plain_eager_call(x, weight, None)
