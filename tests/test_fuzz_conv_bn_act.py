"""Property-based tests of ``conv_bn_act`` on every live backend (targets, layouts, cost bounds and the runner:
tests/fuzz_harness.py).

Each case draws batch (0..5), channels (1..160, any count), H and W (1..70, odd and even), the kernel size,
stride, padding, residual, bias, ReLU, dtype and, per input, a memory layout. Every case either matches the
float64 reference under the tolerance rule (tests/tolerance.py), with the documented output shape, dtype and
memory format and a fresh output tensor, or raises the documented error, decided from the case alone:
ValueError/TypeError from ops/checks.py for invalid inputs (an output too small for the kernel, or one defect
injected into an otherwise valid case: a channel, shape, dtype or device mismatch, an integer or float64 input).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import pytest
import torch
from hypothesis import strategies as st

import hrnet_fast.ops as ops
from fuzz_harness import (INTERPRETED, LAYOUTS, NATIVE, TARGETS, VECTOR_LAYOUTS, Limits, _conv_macs,
                          assert_fresh_output, documented_format, fit_to_budget, is_interpreted, live_device,
                          make_tensor, make_vector, other_float, run_fuzz)
from hrnet_fast.ops.reference import conv_bn_act_ref
from tolerance import assert_matches_reference, cast


def conv_out(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


# defect: (exception, message pattern); the pattern names the problem (format fields from the case).
CONV_DEFECTS: Dict[str, Tuple[type, str]] = {
    "channels": (ValueError, r"x has {cin} channels but weight expects {cin_plus}"),
    "residual_shape": (ValueError, r"residual has shape .* but the conv output is"),
    "bias_shape": (ValueError, r"bias must have shape \({cout},\)"),
    "dtype_mix": (TypeError, r"weight has dtype .* but x has .*must share one dtype"),
    "integer": (TypeError, r"x has dtype torch\.int32; supported dtypes are float32, float16 and bfloat16"),
    "float64": (TypeError, r"x has dtype torch\.float64; supported dtypes are float32, float16 and bfloat16"),
    "device": (ValueError, r"weight is on meta but x is on .*must be on one device"),
}


@dataclass
class ConvCase:
    n: int
    cin: int
    cout: int
    h: int
    w: int
    k: int
    stride: int
    padding: int
    bias: bool
    residual: bool
    relu: bool
    dtype: torch.dtype
    layouts: Dict[str, str]
    defect: Optional[str]
    seed: int

    @property
    def out_hw(self) -> Tuple[int, int]:
        return conv_out(self.h, self.k, self.stride, self.padding), conv_out(self.w, self.k, self.stride, self.padding)


@st.composite
def conv_cases(draw, limits: Limits) -> ConvCase:
    k = draw(st.sampled_from((1, 3)))
    stride = draw(st.sampled_from((1, 2)))
    padding = draw(st.integers(0, k // 2))
    dims = dict(n=draw(st.integers(0, limits.batch)), cin=draw(st.integers(1, limits.channels)),
                cout=draw(st.integers(1, limits.channels)), h=draw(st.integers(1, limits.size)),
                w=draw(st.integers(1, limits.size)))

    def cost(d):
        return limits.conv_cost(d["n"], d["cin"], d["cout"], conv_out(d["h"], k, stride, padding),
                                conv_out(d["w"], k, stride, padding), k)

    dims = fit_to_budget(dims, draw(st.permutations(list(dims))), cost, limits.conv_budget)
    layouts = {"x": draw(st.sampled_from(LAYOUTS)), "weight": draw(st.sampled_from(LAYOUTS)),
               "residual": draw(st.sampled_from(LAYOUTS)), "bias": draw(st.sampled_from(VECTOR_LAYOUTS))}
    case = ConvCase(k=k, stride=stride, padding=padding, bias=draw(st.booleans()), residual=draw(st.booleans()),
                    relu=draw(st.booleans()), dtype=draw(st.sampled_from(limits.conv_dtypes)), layouts=layouts,
                    defect=None, seed=draw(st.integers(0, 2 ** 31 - 1)), **dims)
    # About one case in eight carries a defect; only otherwise valid cases do, so the expected error is unique.
    if min(case.out_hw) > 0 and draw(st.integers(0, 7)) == 7:
        case.defect = draw(st.sampled_from(sorted(CONV_DEFECTS)))
        case.bias = case.bias or case.defect == "bias_shape"
        case.residual = case.residual or case.defect == "residual_shape"
    return case


def conv_inputs(case: ConvCase, device: torch.device):
    """x, weight, bias, residual for a case, with its defect applied."""
    gen = torch.Generator().manual_seed(case.seed)
    dtype, lay = case.dtype, case.layouts
    ho, wo = case.out_hw
    cin_w = case.cin + (case.defect == "channels")
    x = make_tensor((case.n, case.cin, case.h, case.w), dtype, lay["x"], gen, device)
    weight = make_tensor((case.cout, cin_w, case.k, case.k), dtype, lay["weight"], gen, device,
                         scale=(cin_w * case.k ** 2) ** -0.5)
    bias = None
    if case.bias:
        bias = make_vector(case.cout + (case.defect == "bias_shape"), dtype, lay["bias"], gen, device)
    residual = None
    if case.residual and ho > 0 and wo > 0:  # an output too small is refused before the residual is looked at
        residual = make_tensor((case.n, case.cout, ho, wo + (case.defect == "residual_shape")), dtype,
                               lay["residual"], gen, device)
    if case.defect == "dtype_mix":
        weight = weight.to(other_float(dtype))
    elif case.defect == "integer":
        x, weight = (x * 4).to(torch.int32), (weight * 4).to(torch.int32)
    elif case.defect == "float64":
        x, weight, bias, residual = cast((x, weight, bias, residual), torch.float64)
    elif case.defect == "device":
        weight = weight.to("meta")
    return x, weight, bias, residual


def conv_expected_error(case: ConvCase) -> Optional[Tuple[type, str]]:
    if case.defect is not None:
        error, pattern = CONV_DEFECTS[case.defect]
        return error, pattern.format(cin=case.cin, cin_plus=case.cin + 1, cout=case.cout)
    if min(case.out_hw) <= 0:
        return ValueError, rf"input of spatial size \({case.h}, {case.w}\) is too small for a {case.k}x{case.k} kernel"
    return None


def check_conv_case(case: ConvCase, backend: str, device: torch.device) -> str:
    """Runs one case; returns its outcome ("matched" or the expected error's name), or fails."""
    x, weight, bias, residual = conv_inputs(case, device)
    kwargs = dict(stride=case.stride, padding=case.padding, residual=residual, relu=case.relu)
    expected = conv_expected_error(case)
    if expected is not None:
        error, pattern = expected
        with pytest.raises(error, match=pattern):
            ops.conv_bn_act(x, weight, bias, backend=backend, **kwargs)
        return error.__name__
    y = ops.conv_bn_act(x, weight, bias, backend=backend, **kwargs)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (case.n, case.cout, *case.out_hw), f"shape {tuple(y.shape)}"
    assert y.dtype == case.dtype and y.device == x.device
    assert y.is_contiguous(memory_format=documented_format(x)), f"strides {y.stride()} for x strides {x.stride()}"
    assert_fresh_output(y, (x, weight, bias, residual))
    assert_matches_reference(y, conv_bn_act_ref, x, weight, bias, **kwargs)
    return "matched"


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_conv_bn_act_fuzz(backend, device_type, record_property):
    device = live_device(backend, "conv_bn_act", device_type)
    limits = INTERPRETED if is_interpreted(backend, device) else NATIVE
    run_fuzz(f"conv_bn_act/{backend}-{device_type}", conv_cases(limits), check_conv_case, backend, device,
             record_property)


def test_budget_keeps_extremes_reachable():
    """The cost bound halves dimensions in the drawn order, so each extreme survives when it comes last."""
    dims = dict(n=5, cin=160, cout=160, h=70, w=70)
    macs = lambda d: _conv_macs(d["n"], d["cin"], d["cout"], d["h"], d["w"], 3)  # noqa: E731
    kept_channels = fit_to_budget(dims, ["h", "w", "n", "cin", "cout"], macs, NATIVE.conv_budget)
    assert (kept_channels["cin"], kept_channels["cout"]) == (160, 160) and macs(kept_channels) <= 8e6
    kept_size = fit_to_budget(dims, ["cin", "cout", "n", "h", "w"], macs, NATIVE.conv_budget)
    assert (kept_size["h"], kept_size["w"]) == (70, 70)
    assert fit_to_budget(dict(dims, n=0), ["n"], macs, 1)["n"] == 0
