"""Property-based tests of ``multires_fuse`` on every live backend (targets, layouts, cost bounds and the
runner: tests/fuzz_harness.py).

Each case draws batch (0..5), channels (1..160, any count), H and W (1..70), up to four low-res and four same-res
terms, ReLU, dtype, the upsampling mode (nearest with power-of-two scale factors 1/2/4/8 and sizes they divide,
or bilinear with any low-res size up to x's and either align_corners) and, per input, a memory layout. Every case
either matches the float64 reference under the tolerance rule (tests/tolerance.py), with the documented output
shape, dtype and memory format and a fresh output tensor, or raises the documented error, decided from the case
alone: ValueError/TypeError from ops/checks.py for one defect injected into an otherwise valid case (a channel,
batch, shape, dtype or device mismatch, an integer or float64 input, too many inputs, an empty spatial size).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import pytest
import torch
from hypothesis import strategies as st

import hrnet_fast.ops as ops
from fuzz_harness import (DTYPES, INTERPRETED, LAYOUTS, NATIVE, TARGETS, Limits, assert_fresh_output,
                          documented_format, fit_to_budget, is_interpreted, live_device, make_tensor, other_float,
                          run_fuzz)
from hrnet_fast.ops.reference import multires_fuse_ref
from tolerance import assert_matches_reference, cast

FACTORS = (1, 2, 4, 8)

FUSE_DEFECTS: Dict[str, Tuple[type, str]] = {
    "channels": (ValueError, r"low_res\[0\] has shape .*batch and channels must match x"),
    "batch": (ValueError, r"low_res\[0\] has shape .*batch and channels must match x"),
    "factor": (ValueError, r"low_res\[0\] is .* low_res inputs must be smaller than x by one power-of-two factor"),
    "same_shape": (ValueError, r"same_res\[0\] has shape .* but x has"),
    "dtype_mix": (TypeError, r"same_res\[0\] has dtype .* but x has .*must share one dtype"),
    "integer": (TypeError, r"x has dtype torch\.int64; supported dtypes are float32, float16 and bfloat16"),
    "float64": (TypeError, r"x has dtype torch\.float64; supported dtypes are float32, float16 and bfloat16"),
    "device": (ValueError, r"same_res\[0\] is on meta but x is on .*must be on one device"),
    "too_many": (ValueError, r"multires_fuse takes at most 4 low_res and 4 same_res inputs, got \d+ and 5"),
    "empty": (ValueError, r"x has an empty spatial size \(0, \d+\)"),
}
# Where mode="bilinear" words a defect differently: a low-res input larger than x.
BILINEAR_FUSE_DEFECTS = {
    "factor": (ValueError, r"low_res\[0\] is .* bilinear low_res inputs must be non-empty and no larger than x"),
}
# Bilinear low-res sizes are drawn as ceil(size * r / LOW_RES_STEPS) for r in 1..LOW_RES_STEPS (r = LOW_RES_STEPS:
# x's own size, copied).
LOW_RES_STEPS = 16


@dataclass
class FuseCase:
    n: int
    c: int
    h: int
    w: int
    factors: List[int]  # nearest: one per low_res term
    n_same: int
    relu: bool
    dtype: torch.dtype
    layouts: Dict[str, List[str]] = field(default_factory=dict)
    defect: Optional[str] = None
    seed: int = 0
    mode: str = "nearest"
    align_corners: bool = False
    ratios: List[Tuple[int, int]] = field(default_factory=list)  # bilinear: (rh, rw) per low_res term

    def low_size(self, j: int) -> Tuple[int, int]:
        if self.mode == "bilinear":
            rh, rw = self.ratios[j]
            return -(-self.h * rh // LOW_RES_STEPS), -(-self.w * rw // LOW_RES_STEPS)
        return self.h // self.factors[j], self.w // self.factors[j]


@st.composite
def fuse_cases(draw, limits: Limits) -> FuseCase:
    mode = draw(st.sampled_from(("nearest", "bilinear")))
    factors = draw(st.lists(st.sampled_from(FACTORS), max_size=4))
    ratio = st.integers(1, LOW_RES_STEPS)
    ratios = [(draw(ratio), draw(ratio)) for _ in factors] if mode == "bilinear" else []
    n_same = draw(st.integers(0, 4))
    big = max(factors, default=1) if mode == "nearest" else 1  # nearest: H and W are multiples of every factor
    terms = len(factors) + n_same
    dims = dict(n=draw(st.integers(0, limits.batch)), c=draw(st.integers(1, limits.channels)),
                hb=draw(st.integers(1, limits.size // big)), wb=draw(st.integers(1, limits.size // big)))

    def cost(d):
        return limits.fuse_cost(d["n"], d["c"], d["hb"] * big, d["wb"] * big, terms)

    dims = fit_to_budget(dims, draw(st.permutations(list(dims))), cost, limits.fuse_budget)
    layouts = {"x": [draw(st.sampled_from(LAYOUTS))], "low": [draw(st.sampled_from(LAYOUTS)) for _ in factors],
               "same": [draw(st.sampled_from(LAYOUTS)) for _ in range(n_same)]}
    case = FuseCase(n=dims["n"], c=dims["c"], h=dims["hb"] * big, w=dims["wb"] * big, factors=factors,
                    n_same=n_same, relu=draw(st.booleans()), dtype=draw(st.sampled_from(DTYPES)), layouts=layouts,
                    seed=draw(st.integers(0, 2 ** 31 - 1)), mode=mode,
                    align_corners=mode == "bilinear" and draw(st.booleans()), ratios=ratios)
    if draw(st.integers(0, 7)) == 7:
        case.defect = draw(st.sampled_from(sorted(FUSE_DEFECTS)))
    return case


def fuse_inputs(case: FuseCase, device: torch.device):
    """x, low_res, same_res for a case, with its defect applied (a defect that needs a term adds one)."""
    gen = torch.Generator().manual_seed(case.seed)
    n, c, h, w, dtype, lay = case.n, case.c, case.h, case.w, case.dtype, case.layouts
    x = make_tensor((n, c, h, w), dtype, lay["x"][0], gen, device)
    low = [make_tensor((n, c, *case.low_size(j)), dtype, layout, gen, device) for j, layout in enumerate(lay["low"])]
    same = [make_tensor((n, c, h, w), dtype, layout, gen, device) for layout in lay["same"]]
    d = case.defect
    if d in ("channels", "batch", "factor"):
        shape = {"channels": (n, c + 1, h, w), "batch": (n + 1, c, h, w), "factor": (n, c, h + 1, w)}[d]
        low = [make_tensor(shape, dtype, "contiguous", gen, device)] + low[1:]
    elif d in ("same_shape", "dtype_mix", "device"):
        bad = make_tensor((n, c, h, w + (d == "same_shape")), dtype, "contiguous", gen, device)
        bad = bad.to(other_float(dtype)) if d == "dtype_mix" else bad.to("meta") if d == "device" else bad
        same = [bad] + same[1:]
    elif d == "integer":
        x = (x * 4).to(torch.int64)
    elif d == "float64":
        x, low, same = cast((x, low, same), torch.float64)
    elif d == "too_many":
        same = [make_tensor((n, c, h, w), dtype, "contiguous", gen, device) for _ in range(5)]
    elif d == "empty":
        x = make_tensor((n, c, 0, w), dtype, "contiguous", gen, device)
    return x, low, same


def check_fuse_case(case: FuseCase, backend: str, device: torch.device) -> str:
    x, low, same = fuse_inputs(case, device)
    kwargs = dict(relu=case.relu, mode=case.mode, align_corners=case.align_corners)
    if case.defect is not None:
        defects = {**FUSE_DEFECTS, **BILINEAR_FUSE_DEFECTS} if case.mode == "bilinear" else FUSE_DEFECTS
        error, pattern = defects[case.defect]
        with pytest.raises(error, match=pattern):
            ops.multires_fuse(x, low, same, backend=backend, **kwargs)
        return error.__name__
    y = ops.multires_fuse(x, low, same, backend=backend, **kwargs)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (case.n, case.c, case.h, case.w) and y.dtype == case.dtype and y.device == x.device
    assert y.is_contiguous(memory_format=documented_format(x)), f"strides {y.stride()} for x strides {x.stride()}"
    assert_fresh_output(y, (x, *low, *same))
    assert_matches_reference(y, multires_fuse_ref, x, low, same, **kwargs)
    return f"matched {case.mode}"


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_multires_fuse_fuzz(backend, device_type, record_property):
    device = live_device(backend, "multires_fuse", device_type)
    limits = INTERPRETED if is_interpreted(backend, device) else NATIVE
    run_fuzz(f"multires_fuse/{backend}-{device_type}", fuse_cases(limits), check_fuse_case, backend, device,
             record_property)
