"""conv_bn_act on CPU gives the contract's answer on every CPU's path, checked here on any CPU.

In float16/bfloat16 the contract is: bias, residual and ReLU applied to the float32 accumulator, one rounding.
A path that rounds the convolution first loses it, and the cases below are built so that it shows exactly:

* cancel: conv = 1 + 2^-(m+2) (m = mantissa bits), residual -1. Exact: 2^-(m+2); rounded first: 0.
* overflow (float16): conv = 8e4 (inf in float16), residual -6e4. Exact: 2e4; rounded first: inf.

Each runs on every entry point (the public function, a packed weight, a converted model's module, the
registered op, the compiled extension's op), in NCHW and channels_last, for the paths of three kinds of CPU
(``cpu_paths.take_path``): this machine's, one where oneDNN computes float16 and bfloat16 natively (the
AVX512-FP16/AMX Xeon), and one where it computes neither (AVX2).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cpu_paths import PATHS, REDUCED, machine_native, take_path
from hrnet_fast.convert.fused import FusedConvBNAct
from hrnet_fast.ops import cpu_conv, extension
from hrnet_fast.ops.reference import conv_bn_act_ref

MANTISSA = {torch.float16: 10, torch.bfloat16: 7}

# (name, Cin, Cout, H, W, k, stride, padding); the weight's centre tap carries the values, the rest is zero.
SHAPES = (
    ("1x1", 2, 4, 5, 6, 1, 1, 0),
    ("3x3", 2, 4, 5, 6, 3, 1, 1),
    ("3x3-stride2", 2, 4, 7, 7, 3, 2, 1),
    ("3x3-one-channel", 2, 1, 5, 6, 3, 1, 1),   # a residual oneDNN's sum post-op cannot take
    ("3x3-1x1-map", 2, 4, 1, 1, 3, 1, 1),       # likewise
    ("wide-1x1", 64, 256, 4, 4, 1, 1, 0),       # packed for oneDNN on channels_last
)
ENTRIES = ("function", "packed", "module", "op", "extension")


def epilogue_case(shape, dtype: torch.dtype, scenario: str, channels_last: bool):
    _, cin, cout, h, w, k, stride, padding = shape
    a, b, r = (1.0, 2.0 ** -(MANTISSA[dtype] + 2), -1.0) if scenario == "cancel" else (4e4, 4e4, -6e4)
    x = torch.zeros(1, cin, h, w)
    x[:, 0], x[:, 1] = a, 1.0
    weight = torch.zeros(cout, cin, k, k)
    weight[:, 0, k // 2, k // 2], weight[:, 1, k // 2, k // 2] = 1.0, b
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    residual = torch.full((1, cout, ho, wo), r)
    bias = torch.zeros(cout)
    x, weight, residual, bias = (t.to(dtype) for t in (x, weight, residual, bias))
    if channels_last:
        x, residual = x.to(memory_format=torch.channels_last), residual.to(memory_format=torch.channels_last)
    return x, weight, bias, residual


def run(entry: str, x, weight, bias, residual, stride: int, padding: int) -> torch.Tensor:
    if entry == "function":
        return cpu_conv.conv_bn_act(x, weight, bias, stride=stride, padding=padding, residual=residual, relu=True)
    if entry == "packed":
        packed = cpu_conv.pack_weight(weight, stride, padding, x.shape)
        return cpu_conv.conv_bn_act(x, weight if packed is None else packed, bias, stride=stride, padding=padding,
                                    residual=residual, relu=True)
    if entry == "module":
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[-1], stride, padding, bias=False)
        conv.weight.data.copy_(weight.float())
        module = FusedConvBNAct(conv, None, True, x.dtype, "cpu")
        return module(x, residual)
    if entry == "op":
        return torch.ops.hrnet_fast.conv_bn_act(x, weight, bias, residual, stride, padding, True, "cpu")
    extension.module()  # loads the compiled op
    return torch.ops.hrnet_fast_C.conv_bn_act(x, weight, bias, residual, stride, padding, True)


# The overflow case tells the paths apart in float16 only (bfloat16 has float32's range).
CASES = [(dtype, scenario, shape) for dtype in REDUCED for scenario in ("cancel", "overflow") for shape in SHAPES
         if scenario == "cancel" or dtype == torch.float16]


@pytest.mark.parametrize("dtype,scenario,shape", CASES, ids=[f"{str(d)[6:]}-{s}-{sh[0]}" for d, s, sh in CASES])
@pytest.mark.parametrize("path", PATHS)
def test_reduced_precision_epilogue_rounds_once(monkeypatch, path, dtype, scenario, shape):
    """Every entry point and layout on one CPU's path gives the exact answer (the float64 truth, which is
    representable), where rounding the convolution first would not."""
    take_path(monkeypatch, path)
    stride, padding = shape[6], shape[7]
    # The compiled op decides in C++ from the dtype alone (no CPU question to answer): this machine's path.
    entries = [e for e in ENTRIES if e != "extension" or path == "machine"]
    wrong = []
    for layout in ("nchw", "channels_last"):
        x, weight, bias, residual = epilogue_case(shape, dtype, scenario, layout == "channels_last")
        truth = conv_bn_act_ref(x.double(), weight.double(), bias.double(), stride=stride, padding=padding,
                                residual=residual.double(), relu=True)
        rounded_first = torch.relu(conv_bn_act_ref(x.double(), weight.double(), bias.double(), stride=stride,
                                                   padding=padding).to(dtype).double() + residual.double())
        assert not torch.equal(rounded_first.to(dtype), truth.to(dtype)), "the case cannot tell the paths apart"
        for entry in entries:
            y = run(entry, x, weight, bias, residual, stride, padding)
            assert y.dtype == dtype and y.shape == truth.shape, (entry, layout)
            if not torch.equal(y, truth.to(dtype)):
                wrong.append(f"{entry}/{layout}: got {sorted(set(y.double().flatten().tolist()))}")
    assert not wrong, f"expected every element {truth.flatten()[0].item()}; " + "; ".join(wrong)


def test_native_float16_hands_the_residual_to_onednn(monkeypatch):
    """On a CPU with native float16 (the Xeon's path), a channels_last 3x3 conv runs as one oneDNN primitive in
    float16 with the residual as its sum post-op; an NCHW one computes in float32 (ATen would round first)."""
    stand_in = take_path(monkeypatch, "native")
    shape = SHAPES[1]
    for layout, expected in (("channels_last", ["pack torch.float16", "conv torch.float16 + sum"]), ("nchw", [])):
        stand_in.calls.clear()
        x, weight, bias, residual = epilogue_case(shape, torch.float16, "overflow", layout == "channels_last")
        y = run("function", x, weight, bias, residual, 1, 1)
        assert torch.equal(y, torch.full_like(y, 2e4))
        # Recorded only where emulated: this CPU's oneDNN lacks float16 (where it has it, the real one ran).
        emulated = cpu_conv._onednn_ops() and not machine_native(torch.float16)
        assert stand_in.calls == (expected if emulated else [])


@pytest.mark.parametrize("path", ("native", "widened"))
def test_path_decides_compute_dtype(monkeypatch, path):
    """The one question every choice reads: on a "native" CPU the reduced dtypes compute as themselves, on a
    "widened" one in float32 (a packed weight is packed in that dtype)."""
    take_path(monkeypatch, path)
    for dtype in REDUCED:
        assert cpu_conv._compute_dtype(dtype) == (dtype if path == "native" else torch.float32)
    packed = cpu_conv.pack_weight(torch.randn(4, 4, 3, 3).bfloat16(), 1, 1, (1, 4, 8, 8))
    if packed is not None:
        assert packed.dtype == (torch.bfloat16 if path == "native" else torch.float32)
