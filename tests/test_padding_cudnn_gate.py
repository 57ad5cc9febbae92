"""Static gate, no GPU needed: a channel-padded HRNet-W18 (fp16, channels_last, the cuda backend) runs every ReLU
conv on cuDNN's fused conv+bias(+add)+ReLU, and the unpadded one does not.

How: every conv_bn_act call of a converted W18 forward at 224x224 is recorded (a dispatch mode, on the meta
device: the same calls as on a GPU, shapes, dtype, layout, residual and ReLU included, in a fraction of a second),
then each is replayed through ``hrnet_fast.ops.cuda_conv.conv_bn_act``, the cuda backend's decision logic, with its
native call replaced by ``CudnnDouble``, which refuses a fused call the way cuDNN does by the rule below. The count
of fused calls is cuda_conv's own decision, so a change there that loses fusion fails the gate.
"""
from __future__ import annotations

import warnings
from typing import Dict, List

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import hrnet_fast
from hrnet_fast.ops import cuda_conv

pytestmark = pytest.mark.static_gpu

INPUT = (1, 3, 224, 224)


def cudnn_fuses(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The modelled rule: cuDNN's fused conv+bias(+add)+ReLU takes an fp16/bf16 channels_last conv only when its
    input and output channel counts (C and K) are multiples of 8.

    Where it comes from: cuDNN's Developer Guide (Legacy API, "Tensor Core operations", data and filter formats:
    for half-precision NHWC the input and output feature maps must be multiples of 8, i.e. 16-byte channel
    vectors), which the runtime-fusion engines behind ATen's cudnn_convolution_relu / _add_relu inherit; and the
    refusals ``hrnet_fast/ops/cuda_conv.py`` was written for (the 3-channel stem, narrow fp16 channels_last
    convs). It is a model of the rule, not a measurement: the GPU check measures the real decisions."""
    if x.dtype not in (torch.float16, torch.bfloat16) or not x.is_contiguous(memory_format=torch.channels_last):
        return False  # not the case the gate is about; cuDNN's fp32 / NCHW rules differ
    return x.shape[1] % 8 == 0 and weight.shape[0] % 8 == 0


class CudnnDouble:
    """Stands in for the extension's conv_bn_act: a fused call (``library_fused``) that cuDNN would refuse raises
    as cuDNN's does; every call returns an output of the right shape (on x's device, meta)."""

    def __init__(self) -> None:
        self.fused = 0

    def __call__(self, x, weight, bias, residual, stride, padding, relu, library_fused):
        if library_fused:
            if not cudnn_fuses(x, weight):
                raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in "
                                   "a non-contiguous input.")
            self.fused += 1
        k = weight.shape[-1]
        size = [(s + 2 * padding - k) // stride + 1 for s in x.shape[2:]]
        return torch.empty(x.shape[0], weight.shape[0], *size, dtype=x.dtype, device=x.device).contiguous(
            memory_format=torch.channels_last)


class Recorder(TorchDispatchMode):
    """Records the fused ops' calls: conv_bn_act's arguments, and how many multires_fuse calls."""

    def __init__(self) -> None:
        super().__init__()
        self.convs: List[Dict] = []
        self.fuses = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith("hrnet_fast.conv_bn_act"):
            x, weight, bias, residual, stride, padding, relu = args[:7]
            self.convs.append(dict(x=x, weight=weight, bias=bias, residual=residual, stride=stride, padding=padding,
                                   relu=relu))
        elif name.startswith("hrnet_fast.multires_fuse"):
            self.fuses += 1
        return func(*args, **(kwargs or {}))


def w18_calls(pad_channels: int) -> Recorder:
    torch.manual_seed(0)
    model = hrnet_fast.create_model("hrnet_w18").eval()
    fast = hrnet_fast.convert(model, dtype=torch.float16, pad_channels=pad_channels, cuda_graph=False).to("meta")
    recorder = Recorder()
    with recorder, torch.no_grad():
        fast(torch.empty(INPUT, dtype=torch.float16, device="meta"))
    return recorder


def decide(recorder: Recorder, monkeypatch) -> Dict[str, int]:
    """Replays every recorded conv through cuda_conv's decisions; counts and a kernels-per-forward estimate: a
    fused ReLU conv is one kernel, any other conv two (convolution + epilogue kernel, csrc/cuda/conv_bn_act.cu),
    a multires_fuse one, the input's layout copy one (two where it is padded: zero fill + copy)."""
    double = CudnnDouble()
    monkeypatch.setattr(cuda_conv, "_native", lambda: double)
    monkeypatch.setattr(cuda_conv, "_fused_ok", {})
    monkeypatch.setattr(torch.backends.cudnn, "enabled", True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # meta tensors: no stream
    relu = [c for c in recorder.convs if c["relu"]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for c in recorder.convs:
            cuda_conv.conv_bn_act(c["x"], c["weight"], c["bias"], stride=c["stride"], padding=c["padding"],
                                  residual=c["residual"], relu=c["relu"])
    refusals = [w for w in caught if "CUDNN_STATUS_NOT_SUPPORTED" in str(w.message)]
    padded_image = recorder.convs[0]["x"].shape[1] != INPUT[1]
    kernels = double.fused + 2 * (len(recorder.convs) - double.fused) + recorder.fuses + (2 if padded_image else 1)
    return dict(convs=len(recorder.convs), relu=len(relu), fused=double.fused, refused_problems=len(refusals),
                fuses=recorder.fuses, kernels=kernels)


@pytest.fixture(scope="module")
def calls():
    return {pad: w18_calls(pad) for pad in (1, 8)}


def test_padded_w18_runs_every_relu_conv_fused(calls, monkeypatch):
    padded = decide(calls[8], monkeypatch)
    assert padded["convs"] == 325 and padded["relu"] > 250, padded
    assert padded["fused"] == padded["relu"] and padded["refused_problems"] == 0, padded
    unpadded = decide(calls[1], monkeypatch)
    print(f"\nW18 fp16 channels_last, batch 1, 224x224, cuda backend (modelled cuDNN rule): unpadded "
          f"{unpadded['fused']}/{unpadded['relu']} ReLU convs fused, ~{unpadded['kernels']} kernels per forward; "
          f"padded to multiples of 8: {padded['fused']}/{padded['relu']}, ~{padded['kernels']} kernels")
    assert padded["kernels"] < unpadded["kernels"]


def test_unpadded_w18_fails_the_same_gate(calls, monkeypatch):
    """The gate can fail: without padding, every ReLU conv with 3, 18 or 36 channels in or out is refused."""
    unpadded = decide(calls[1], monkeypatch)
    assert unpadded["relu"] == decide(calls[8], monkeypatch)["relu"]
    narrow = [c for c in calls[1].convs if c["relu"] and not cudnn_fuses(c["x"], c["weight"])]
    assert len(narrow) > 100 and unpadded["fused"] == unpadded["relu"] - len(narrow), unpadded
    assert unpadded["refused_problems"] > 0  # cuda_conv saw the double's error as a refusal and warned
