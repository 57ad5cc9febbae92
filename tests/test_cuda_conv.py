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
        self.fallback_error = None  # raised by the unfused path, for every problem

    def __call__(self, x, weight, bias, residual, stride, padding, relu, library_fused):
        self.calls.append(library_fused)
        if library_fused and x.shape[1] == self.refuse_channels:
            raise self.error
        if not library_fused and self.fallback_error is not None:
            raise self.fallback_error
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


# What torch 2.11 raises when cuDNN declines a fused problem (aten/src/ATen/native/cudnn/Conv_v8.cpp for the v8/v9
# API; cudnn_frontend's exception text, "<what failed> cudnn_status: <status>"; the v7 path's CuDNNError).
REFUSALS = [
    "GET was unable to find an engine to execute this computation",
    "FIND was unable to find an engine to execute this computation",
    "CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR: cudnnFinalize Descriptor Failed cudnn_status: CUDNN_STATUS_NOT_SUPPORTED",
    "CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: cudnnFinalize Descriptor Failed cudnn_status: "
    "CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN",
    "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED",
]


@pytest.mark.parametrize("message", REFUSALS)
def test_each_cudnn_refusal_falls_back_with_one_warning(native, message):
    native.error = RuntimeError(f"{message}\nException raised from run_fused_conv at Conv_v8.cpp (most recent call "
                                f"first)")
    x, w, b, r = problem(3)
    with pytest.warns(RuntimeWarning, match="cuDNN has no fused conv") as record:
        y = run(x, w, b, r)
    assert len(record) == 1 and message in str(record[0].message)
    assert "(1, 3, 9, 9)" in str(record[0].message)  # names the problem
    assert native.calls == [True, False] and list(cuda_conv.decisions().values()) == [False]
    assert_matches_reference(y, conv_bn_act_ref, x, w, b, stride=1, padding=1, residual=r, relu=True)


FAULTS = [  # (type, message) of errors that are not cuDNN declining: each must propagate
    (torch.AcceleratorError, "CUDA error: an illegal memory access was encountered"),
    (RuntimeError, "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously "
                   "reported at some other API call"),
    (RuntimeError, "CUDA error: unspecified launch failure"),
    (RuntimeError, "cuDNN error: CUDNN_STATUS_BAD_PARAM"),
    (RuntimeError, "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"),
    (RuntimeError, "CUDNN_BACKEND_TENSOR_DESCRIPTOR: Check and Set CUDNN_ATTR_TENSOR_STRIDES cudnn_status: "
                   "CUDNN_STATUS_BAD_PARAM"),
    (RuntimeError, "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cuda:1!"),
    (torch.cuda.OutOfMemoryError, "CUDA out of memory. Tried to allocate 2.00 GiB"),
]


@pytest.mark.parametrize("kind, message", FAULTS, ids=lambda v: v.__name__ if isinstance(v, type) else v[:40])
def test_a_fault_is_raised_with_the_problem_and_decides_nothing(native, kind, message):
    native.error = error = kind(message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no refusal warning
        with pytest.raises(kind) as raised:
            run(*problem(3))
    assert raised.value is error  # same object: type and traceback kept
    assert message in str(raised.value)
    assert "cuDNN's fused conv+bias+ReLU failed on x (1, 3, 9, 9) torch.float32 channels_last" in str(raised.value)
    assert "weight (8, 3, 3, 3), stride 1, padding 1" in str(raised.value)
    assert native.calls == [True]  # no fallback ran over the fault
    assert cuda_conv.decisions() == {}


def test_a_refusal_whose_fallback_fails_is_a_fault(native):
    """A CUDA fault inside cuDNN's engine search reads as "no engine"; the sticky error then fails the fallback."""
    native.error = RuntimeError(REFUSALS[0])
    native.fallback_error = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(torch.AcceleratorError, match="failed after cuDNN refused to run it fused") as raised:
            run(*problem(3))
    assert "illegal memory access" in str(raised.value)
    assert native.calls == [True, False] and cuda_conv.decisions() == {}


@pytest.mark.parametrize("message", REFUSALS)
def test_is_refusal_reads_only_cudnn_declining(message):
    assert cuda_conv.is_refusal(RuntimeError(message))
    assert not cuda_conv.is_refusal(torch.cuda.OutOfMemoryError(message))
    assert not cuda_conv.is_refusal(ValueError(message))
    assert not any(cuda_conv.is_refusal(kind(fault)) for kind, fault in FAULTS)


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
