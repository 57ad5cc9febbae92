"""The cuda backend's conv_bn_act (hrnet_fast/ops/cuda_conv.py): cuDNN's fused op where cuDNN runs the problem,
the convolution + epilogue kernel where it refuses, decided once per problem outside CUDA-graph capture. The
decision logic runs here on CPU tensors with an injected cuDNN refusal; the gpu tests run the real thing."""
from __future__ import annotations

import warnings

import pytest
import torch

from hrnet_fast.ops import cuda_conv
from hrnet_fast.ops.reference import conv_bn_act_ref
from hrnet_fast_kernels import conv_dot_precision
from tolerance import assert_matches_reference


class FakeNative:
    """Stands in for torch.ops.hrnet_fast_C.conv_bn_act: records the library_fused flag of every call and refuses
    the fused op for inputs with ``refuse_channels`` channels, as cuDNN does for problems it has no engine for."""

    def __init__(self, refuse_channels=3, error=None):
        self.calls = []
        self.refuse_channels = refuse_channels
        self.error = error or RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")

    def __call__(self, x, weight, bias, residual, stride, padding, relu, library_fused):
        self.calls.append(library_fused)
        if library_fused and x.shape[1] == self.refuse_channels:
            raise self.error
        return conv_bn_act_ref(x, weight, bias, stride=stride, padding=padding, residual=residual, relu=relu)


@pytest.fixture
def native(monkeypatch):
    fake = FakeNative()
    monkeypatch.setattr(cuda_conv, "_native", lambda: fake)
    monkeypatch.setattr(cuda_conv, "_fused_ok", {})
    monkeypatch.setattr(torch.backends.cudnn, "enabled", True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # CPU tensors: no stream
    return fake


def problem(cin, dtype=torch.float32, channels_last=True, residual=False):
    torch.manual_seed(0)
    x = torch.randn(1, cin, 9, 9, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(8, cin, 3, 3) / (3 * cin ** 0.5)).to(dtype)
    b = torch.randn(8, dtype=dtype)
    r = torch.randn(1, 8, 9, 9, dtype=dtype) if residual else None
    return x, w, b, r


def run(x, w, b, r, relu=True):
    return cuda_conv.conv_bn_act(x, w, b, stride=1, padding=1, residual=r, relu=relu)


def test_refused_problem_falls_back_once_and_is_remembered(native):
    x, w, b, r = problem(3)
    with pytest.warns(RuntimeWarning, match="cuDNN has no fused conv.*CUDNN_STATUS_NOT_SUPPORTED"):
        y = run(x, w, b, r)
    assert native.calls == [True, False]
    assert_matches_reference(y, conv_bn_act_ref, x, w, b, stride=1, padding=1, residual=r, relu=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per problem
        run(x, w, b, r)
    assert native.calls == [True, False, False]
    assert list(cuda_conv.decisions().values()) == [False]


def test_accepted_problem_stays_fused(native):
    x, w, b, r = problem(18, residual=True)
    for _ in range(3):
        y = run(x, w, b, r)
    assert native.calls == [True, True, True]
    assert list(cuda_conv.decisions().values()) == [True]
    assert_matches_reference(y, conv_bn_act_ref, x, w, b, stride=1, padding=1, residual=r, relu=True)


@pytest.mark.parametrize("change", ["dtype", "layout", "residual", "tf32"])
def test_each_part_of_the_problem_gets_its_own_decision(native, monkeypatch, change):
    run(*problem(18))
    if change == "tf32":
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", not torch.backends.cudnn.allow_tf32)
        run(*problem(18))
    else:
        run(*problem(18, **{"dtype": dict(dtype=torch.float16), "layout": dict(channels_last=False),
                            "residual": dict(residual=True)}[change]))
    assert len(cuda_conv.decisions()) == 2


def test_nothing_is_tried_during_capture(native, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    x, w, b, r = problem(18)
    y = run(x, w, b, r)
    assert native.calls == [False] and cuda_conv.decisions() == {}
    assert_matches_reference(y, conv_bn_act_ref, x, w, b, stride=1, padding=1, residual=r, relu=True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # capture over
    run(x, w, b, r)
    assert native.calls == [False, True] and list(cuda_conv.decisions().values()) == [True]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    run(x, w, b, r)  # decided: a capture records the fused op
    assert native.calls == [False, True, True]


def test_without_relu_or_cudnn_there_is_nothing_to_decide(native, monkeypatch):
    x, w, b, r = problem(18)
    run(x, w, b, r, relu=False)
    monkeypatch.setattr(torch.backends.cudnn, "enabled", False)
    run(x, w, b, r)
    assert native.calls == [False, False] and cuda_conv.decisions() == {}


def test_out_of_memory_is_not_taken_for_a_refusal(native):
    native.error = torch.cuda.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run(*problem(3))
    assert cuda_conv.decisions() == {}


def test_triton_fp32_dot_precision_follows_the_cudnn_tf32_flag(monkeypatch):
    for allowed, expected in ((True, "tf32"), (False, "ieee")):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allowed)
        assert conv_dot_precision(torch.float32) == expected
        assert conv_dot_precision(torch.float16) == "tf32"  # 16-bit products are exact in either mode


# -- GPU --------------------------------------------------------------------------------------------------------

needs_cuda_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available()
         and torch._C._dispatch_has_kernel_for_dispatch_key("hrnet_fast_C::conv_bn_act", "CUDA")),
    reason="needs a GPU and the extension's CUDA kernels")


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("tf32", (False, True), ids=("tf32_off", "tf32_on"))
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "channels_last"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
@pytest.mark.parametrize("cin", (3, 18, 36))
def test_gpu_every_problem_runs_and_matches(cin, dtype, channels_last, tf32):
    """The problems cuDNN's fused op is known to refuse on some versions (3-channel stem, 18/36-channel fp16 NHWC,
    NCHW fp32, fp32 without TF32): each runs, fused or not, and matches eager PyTorch under the same flags."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32):
        for residual in (False, True):
            x, w, b, r = (t.cuda() if t is not None else None for t in problem(cin, dtype, channels_last, residual))
            y = run(x, w, b, r)
            assert cuda_conv.problem_key(x, w, r, 1, 1) in cuda_conv.decisions()
            eager = conv_bn_act_ref(x, w, b, stride=1, padding=1, residual=r, relu=True)
            assert_matches_reference(y, conv_bn_act_ref, x, w, b, stride=1, padding=1, residual=r, relu=True)
            if dtype == torch.float32 and tf32:  # same flags, same TF32 rounding class as eager
                torch.testing.assert_close(y, eager, rtol=5e-3, atol=5e-3)
