"""Property-based tests of ``conv_bn_act`` and ``multires_fuse`` on every live backend, and their behaviour on
NaN, Inf, fp16 overflow and denormal values.

Each fuzz case draws batch (0..5), channels (1..160, any count), H and W (1..70, odd and even), the kernel size,
stride, padding, residual, bias, ReLU, dtype, the upsampling mode (nearest with power-of-two scale factors 1/2/4/8 and
sizes they divide, or bilinear with any low-res size up to x's and either align_corners) and, per input, a memory
layout: contiguous, channels_last, a strided slice, the transpose of a tensor made the other
way round (``t.transpose(2, 3)``, still an NCHW tensor in meaning), or a batch broadcast with stride 0. Every case
either matches the float64 reference under the tolerance rule (tests/tolerance.py), with the documented output
shape, dtype and memory format and a fresh output tensor, or raises the documented error, decided from the case
alone: ValueError/TypeError from ops/checks.py for invalid inputs (an output too small for the kernel, or one
defect injected into an otherwise valid case: a channel, batch, shape, dtype or device mismatch, an integer or
float64 input, too many inputs, an empty spatial size). A watchdog turns a hang into a failure with every
thread's traceback.

Targets: torch, cpu and triton (interpreted) on CPU tensors; cuda and triton on a GPU (marked ``gpu``). Backends
that are not live skip with the dispatcher's reason. Sizes are bounded per case by a cost budget, tighter for the
interpreter (see ``NATIVE`` and ``INTERPRETED``), which also cannot run bfloat16 convolutions (refused with
NotImplementedError, tested in test_conv_bn_act.py). Case counts per profile: tests/fuzz_profiles.py. The long
run (1,000 cases per op and backend):

    HRNET_FAST_FUZZ=long .venv/bin/python -m pytest tests/test_fuzz_ops.py -q -rA -s -p no:cacheprovider

It prints, and records as junit properties, the number of cases per op and backend, their outcomes and the time.
"""
from __future__ import annotations

import collections
import faulthandler
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hrnet_fast.ops as ops
from fuzz_profiles import fuzz_settings
from hrnet_fast.ops.backends import availability
from hrnet_fast.ops.reference import conv_bn_act_ref, multires_fuse_ref
from tolerance import assert_matches_reference, cast

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed", "broadcast")
VECTOR_LAYOUTS = ("contiguous", "sliced", "broadcast")
FACTORS = (1, 2, 4, 8)
WATCHDOG_S = 300  # one case; the slowest interpreted case takes a few seconds

# (backend, device type); triton on CPU tensors runs through the interpreter (tests/conftest.py).
TARGETS = (
    pytest.param("torch", "cpu", id="torch-cpu"),
    pytest.param("cpu", "cpu", id="cpu-cpu"),
    pytest.param("triton", "cpu", id="triton-interpreted"),
    pytest.param("cuda", "cuda", id="cuda-gpu", marks=pytest.mark.gpu),
    pytest.param("triton", "cuda", id="triton-gpu", marks=pytest.mark.gpu),
)


def live_device(backend: str, op: str, device_type: str) -> torch.device:
    """The device to fuzz ``backend`` on; skips with the dispatcher's reason when it is not live there."""
    live, why = availability(backend, op, device_type)
    if not live:
        pytest.skip(f"backend {backend!r} is not live for {op} on {device_type}: {why}")
    return torch.device(device_type)


def is_interpreted(backend: str, device: torch.device) -> bool:
    return backend == "triton" and device.type == "cpu"


# ----------------------------------------------------------------------------------------------- inputs
def make_tensor(shape: Sequence[int], dtype: torch.dtype, layout: str, gen: torch.Generator, device: torch.device,
                scale: float = 1.0) -> torch.Tensor:
    """A random [N, C, H, W] tensor in ``layout``. The base is moved and cast first and the view taken last, since
    ``.to()`` makes a copy of a tensor that is not dense, which would lose the layout."""
    n, c, h, w = shape
    base_shape = {"contiguous": (n, c, h, w), "channels_last": (n, c, h, w), "sliced": (n, 2 * c, h + 1, 2 * w),
                  "transposed": (n, c, w, h), "broadcast": (1, c, h, w)}[layout]
    base = (torch.randn(base_shape, generator=gen) * scale).to(device=device, dtype=dtype)
    if layout == "channels_last":
        return base.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        return base[:, ::2, 1:, ::2]
    if layout == "transposed":
        return base.transpose(2, 3)
    if layout == "broadcast":
        return base.expand(n, c, h, w)
    return base


def make_vector(size: int, dtype: torch.dtype, layout: str, gen: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """A random [size] tensor: contiguous, every other element of a longer one, or one value broadcast."""
    if layout == "sliced":
        return torch.randn(2 * size, generator=gen).to(device=device, dtype=dtype)[::2]
    if layout == "broadcast":
        return torch.randn(1, generator=gen).to(device=device, dtype=dtype).expand(size)
    return torch.randn(size, generator=gen).to(device=device, dtype=dtype)


def documented_format(x: torch.Tensor) -> torch.memory_format:
    """The ops' contract: the output is channels_last when x is (and is not also plain NCHW), else NCHW."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def other_float(dtype: torch.dtype) -> torch.dtype:
    return torch.float16 if dtype != torch.float16 else torch.float32


def assert_fresh_output(y: torch.Tensor, inputs: Sequence[Optional[torch.Tensor]]) -> None:
    """The op returns a new tensor: it never aliases (writes into, or hands back) one of its inputs."""
    if y.numel() == 0:
        return
    ptr = y.untyped_storage().data_ptr()
    for t in inputs:
        if t is not None and t.numel():
            assert t.untyped_storage().data_ptr() != ptr, "the output shares memory with an input"


# ------------------------------------------------------------------------------------------------ cost bounds
@dataclass(frozen=True)
class Limits:
    """Largest sizes drawn, and a per-case cost budget that sizes are halved down to (in a drawn order, so that
    either large channel counts or large spatial sizes survive); the dtypes convolutions are drawn in."""
    conv_dtypes: Tuple[torch.dtype, ...]
    batch: int
    channels: int
    size: int
    conv_cost: Callable[..., float]
    conv_budget: float
    fuse_cost: Callable[..., float]
    fuse_budget: float


def _conv_macs(n: int, cin: int, cout: int, ho: int, wo: int, k: int) -> float:
    # The float64 reference dominates the time of a native case.
    return n * cin * cout * k * k * max(ho, 0) * max(wo, 0)


def _conv_interpreter_steps(n: int, cin: int, cout: int, ho: int, wo: int, k: int) -> float:
    # The interpreter's one tile (kernels/conv_bn_act.py): BLOCK_M=128, BLOCK_N=64, BLOCK_K=32; each program
    # runs k*k*ceil(cin/32) dot steps in Python, a few ms each.
    return math.ceil(n * max(ho, 0) * max(wo, 0) / 128) * math.ceil(cout / 64) * k * k * math.ceil(cin / 32)


def _fuse_elements(n: int, c: int, h: int, w: int, terms: int) -> float:
    return n * c * h * w * (1 + terms)


def _fuse_interpreter_programs(n: int, c: int, h: int, w: int, terms: int) -> float:
    # The interpreter's one block (kernels/multires_fuse.py): BLOCK=4096 output elements per program.
    return math.ceil(n * c * h * w / 4096)


NATIVE = Limits(conv_dtypes=DTYPES, batch=5, channels=160, size=70, conv_cost=_conv_macs, conv_budget=8e6,
                fuse_cost=_fuse_elements, fuse_budget=2e6)
INTERPRETED = Limits(conv_dtypes=(torch.float32, torch.float16), batch=5, channels=160, size=70,
                     conv_cost=_conv_interpreter_steps, conv_budget=36,
                     fuse_cost=_fuse_interpreter_programs, fuse_budget=4)


def fit_to_budget(dims: Dict[str, int], order: Sequence[str], cost: Callable[[Dict[str, int]], float],
                  budget: float) -> Dict[str, int]:
    """Halves the dimensions in ``order`` (each down to 1, a batch of 0 stays 0) until ``cost(dims) <= budget``."""
    dims = dict(dims)
    for key in order:
        while cost(dims) > budget and dims[key] > 1:
            dims[key] //= 2
    assert cost(dims) <= budget, f"{dims} cost {cost(dims)} > {budget}"
    return dims


def conv_out(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


# ------------------------------------------------------------------------------------------------ conv_bn_act
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


# ---------------------------------------------------------------------------------------------- multires_fuse
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


# ---------------------------------------------------------------------------------------------------- runner
def run_fuzz(label: str, cases: st.SearchStrategy, check: Callable[..., str], backend: str, device: torch.device,
             record_property: Callable[[str, object], None]) -> None:
    """Runs ``check`` on the active profile's cases; prints and records how many ran, their outcomes and the time.

    A case that runs past ``WATCHDOG_S`` dumps every thread's traceback and ends the process: a hang fails loudly.
    """
    outcomes: collections.Counter = collections.Counter()

    @fuzz_settings(is_interpreted(backend, device))
    @given(case=cases)
    def property_holds(case) -> None:
        faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
        try:
            outcomes[check(case, backend, device)] += 1
        finally:
            faulthandler.cancel_dump_traceback_later()

    start = time.perf_counter()
    property_holds()
    seconds = time.perf_counter() - start
    total = sum(outcomes.values())
    record_property("fuzz_cases", total)
    record_property("fuzz_outcomes", dict(outcomes))
    record_property("fuzz_seconds", round(seconds, 1))
    print(f"\n{label}: {total} cases in {seconds:.1f} s; outcomes {dict(sorted(outcomes.items()))}")
    assert any(o.startswith("matched") for o in outcomes), f"{label}: no case ran the op to completion"


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_conv_bn_act_fuzz(backend, device_type, record_property):
    device = live_device(backend, "conv_bn_act", device_type)
    limits = INTERPRETED if is_interpreted(backend, device) else NATIVE
    run_fuzz(f"conv_bn_act/{backend}-{device_type}", conv_cases(limits), check_conv_case, backend, device,
             record_property)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_multires_fuse_fuzz(backend, device_type, record_property):
    device = live_device(backend, "multires_fuse", device_type)
    limits = INTERPRETED if is_interpreted(backend, device) else NATIVE
    run_fuzz(f"multires_fuse/{backend}-{device_type}", fuse_cases(limits), check_fuse_case, backend, device,
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


# ---------------------------------------------------------------------------------------------- special values
def assert_same_nonfinite(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """NaN where ``expected`` is NaN, +inf / -inf where it is; finite elsewhere."""
    for name, mask in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        a, e = mask(actual), mask(expected)
        assert torch.equal(a, e), (f"{name} at {int((a & ~e).sum())} unexpected and {int((e & ~a).sum())} missing "
                                   f"positions (of {int(e.sum())} expected)")


def assert_matches_where_finite(actual: torch.Tensor, reference: Callable[..., torch.Tensor], *args,
                                **kwargs) -> None:
    """The tolerance rule on the positions where the float64 and the same-dtype reference are both finite."""
    truth = reference(*cast(args, torch.float64), **{k: cast(v, torch.float64) for k, v in kwargs.items()})
    finite = torch.isfinite(truth) & torch.isfinite(reference(*args, **kwargs))

    def masked(*a, **k):
        return torch.where(finite.to(a[0].device), reference(*a, **k), 0)

    assert_matches_reference(torch.where(finite, actual, 0), masked, *args, **kwargs)


def nonfinite_conv_inputs(device: torch.device):
    """fp32 conv inputs with NaN, +inf and -inf at a few positions of x and the residual, and a zero weight tap
    (inf * 0 is NaN)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 11, generator=gen)
    x[0, 0, 1, 1] = float("nan")
    x[0, 3, 6, 8] = float("inf")
    x[1, 2, 4, 2] = float("-inf")
    x[1, 5, 4, 4] = float("inf")  # +inf and -inf in one receptive field: NaN
    weight = torch.randn(6, 8, 3, 3, generator=gen) * 0.3
    weight[2, 3, 1, 1] = 0.0
    bias = torch.randn(6, generator=gen)
    residual = torch.randn(2, 6, 9, 11, generator=gen)
    residual[0, 4, 0, 10] = float("-inf")
    residual[1, 1, 8, 0] = float("nan")
    return [t.to(device) for t in (x, weight, bias, residual)]


@pytest.mark.parametrize("relu", (True, False), ids=("relu", "no-relu"))
@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_conv_bn_act_nan_inf_propagate(backend, device_type, relu):
    device = live_device(backend, "conv_bn_act", device_type)
    x, weight, bias, residual = nonfinite_conv_inputs(device)
    kwargs = dict(stride=1, padding=1, residual=residual, relu=relu)
    truth = conv_bn_act_ref(x.double(), weight.double(), bias.double(), **dict(kwargs, residual=residual.double()))
    assert torch.isnan(truth).any() and torch.isposinf(truth).any() and torch.isfinite(truth).any()
    assert torch.isneginf(truth).any() != relu  # ReLU turns -inf into 0
    y = ops.conv_bn_act(x, weight, bias, backend=backend, **kwargs)
    assert_same_nonfinite(y, truth)
    assert_matches_where_finite(y, conv_bn_act_ref, x, weight, bias, **kwargs)


@pytest.mark.parametrize("relu", (True, False), ids=("relu", "no-relu"))
@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_multires_fuse_nan_inf_propagate(backend, device_type, relu):
    device = live_device(backend, "multires_fuse", device_type)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, 12, generator=gen)
    z2, z4 = torch.randn(2, 5, 4, 6, generator=gen), torch.randn(2, 5, 2, 3, generator=gen)
    d = torch.randn(2, 5, 8, 12, generator=gen)
    x[0, 0, 0, 0] = float("nan")
    z2[0, 1, 1, 1] = float("inf")  # a 2x2 block of the output
    z4[1, 2, 1, 2] = float("-inf")  # a 4x4 block
    d[1, 2, 5, 9] = float("inf")  # inside z4's -inf block: NaN
    d[0, 3, 7, 11] = float("-inf")
    x, low, same = x.to(device), [z2.to(device), z4.to(device)], [d.to(device)]
    truth = multires_fuse_ref(x.double(), [z.double() for z in low], [d.double()], relu=relu)
    assert torch.isnan(truth).any() and torch.isposinf(truth).any() and torch.isneginf(truth).any() != relu
    y = ops.multires_fuse(x, low, same, relu=relu, backend=backend)
    assert_same_nonfinite(y, truth)
    assert_matches_where_finite(y, multires_fuse_ref, x, low, same, relu=relu)


def signed_multiples(shape: Sequence[int], gen: torch.Generator, most: int, unit: float = 1e4) -> torch.Tensor:
    """Non-negative multiples of ``unit`` (0..``most`` units), negated for batch item 1: every sum an op forms at an
    output position has one sign, so eager fp16 overflows (monotone partial sums) exactly where the exact result
    does, and multiples of 1e4 keep every sum far from the fp16 overflow threshold (65520): <= 6e4 or >= 7e4."""
    t = torch.randint(0, most + 1, tuple(shape), generator=gen).float() * unit
    t[1:] = -t[1:]
    return t


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_conv_bn_act_fp16_saturates_like_pytorch(backend, device_type):
    """1e4-scale fp16 inputs: +-inf exactly where PyTorch's fp16 result is +-inf, the tolerance rule elsewhere."""
    device = live_device(backend, "conv_bn_act", device_type)
    gen = torch.Generator().manual_seed(0)
    x = signed_multiples((2, 3, 7, 9), gen, most=2)
    # 0 or 1 (one in four): products stay multiples of 1e4, and some sums stay finite
    weight = (torch.randint(0, 4, (5, 3, 3, 3), generator=gen) == 0).float()
    residual = signed_multiples((2, 5, 7, 9), gen, most=2)
    x, weight, residual = (t.to(device=device, dtype=torch.float16) for t in (x, weight, residual))
    kwargs = dict(stride=1, padding=1, residual=residual, relu=False)
    eager = conv_bn_act_ref(x, weight, None, **kwargs)
    truth = conv_bn_act_ref(x.double(), weight.double(), None, **dict(kwargs, residual=residual.double()))
    assert_same_nonfinite(eager, truth.half())  # the data keeps eager's overflows where the exact sum's are
    assert torch.isposinf(eager).any() and torch.isneginf(eager).any() and torch.isfinite(eager).any()
    y = ops.conv_bn_act(x, weight, None, backend=backend, **kwargs)
    assert_same_nonfinite(y, eager)
    assert_matches_where_finite(y, conv_bn_act_ref, x, weight, None, **kwargs)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_multires_fuse_fp16_saturates_like_pytorch(backend, device_type):
    device = live_device(backend, "multires_fuse", device_type)
    gen = torch.Generator().manual_seed(0)
    x = signed_multiples((2, 4, 8, 8), gen, most=3)
    low = [signed_multiples((2, 4, 4, 4), gen, most=3), signed_multiples((2, 4, 1, 1), gen, most=3)]
    same = [signed_multiples((2, 4, 8, 8), gen, most=3)]
    x, low, same = cast((x, low, same), torch.float16)
    x, low, same = x.to(device), [z.to(device) for z in low], [d.to(device) for d in same]
    eager = multires_fuse_ref(x, low, same, relu=False)
    truth = multires_fuse_ref(*cast((x, low, same), torch.float64), relu=False)
    assert_same_nonfinite(eager, truth.half())
    assert torch.isposinf(eager).any() and torch.isneginf(eager).any() and torch.isfinite(eager).any()
    y = ops.multires_fuse(x, low, same, relu=False, backend=backend)
    assert_same_nonfinite(y, eager)
    assert_matches_where_finite(y, multires_fuse_ref, x, low, same, relu=False)


FUSED_TARGETS = tuple(t for t in TARGETS if t.values[0] != "torch")  # the torch backend is eager fp16 itself


@pytest.mark.parametrize("backend, device_type", FUSED_TARGETS)
def test_conv_bn_act_fp16_accumulates_in_fp32(backend, device_type):
    """conv = 8e4 overflows fp16, conv + residual = 2e4 does not: eager fp16 returns inf, a fused kernel that
    keeps its epilogue in fp32 (DESIGN.md, Numerics) returns the exact 2e4."""
    device = live_device(backend, "conv_bn_act", device_type)
    x = torch.full((1, 8, 3, 3), 1e4, dtype=torch.float16, device=device)
    weight = torch.zeros(2, 8, 1, 1, dtype=torch.float16, device=device)
    weight[:, :, 0, 0] = 1.0
    residual = torch.full((1, 2, 3, 3), -6e4, dtype=torch.float16, device=device)
    assert torch.isposinf(conv_bn_act_ref(x, weight, None, residual=residual, relu=False)).all()
    y = ops.conv_bn_act(x, weight, None, residual=residual, relu=False, backend=backend)
    torch.testing.assert_close(y, torch.full_like(y, 2e4), rtol=0, atol=0)


@pytest.mark.parametrize("backend, device_type", FUSED_TARGETS)
def test_multires_fuse_fp16_accumulates_in_fp32(backend, device_type):
    """4e4 + up(4e4) - 4e4: eager fp16 overflows at the first add; the fused sum runs in fp32 and gives 4e4."""
    device = live_device(backend, "multires_fuse", device_type)
    x = torch.full((1, 3, 4, 4), 4e4, dtype=torch.float16, device=device)
    low = [torch.full((1, 3, 2, 2), 4e4, dtype=torch.float16, device=device)]
    same = [torch.full((1, 3, 4, 4), -4e4, dtype=torch.float16, device=device)]
    assert torch.isposinf(multires_fuse_ref(x, low, same, relu=True)).all()
    y = ops.multires_fuse(x, low, same, relu=True, backend=backend)
    torch.testing.assert_close(y, torch.full_like(y, 4e4), rtol=0, atol=0)


def denormals(shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """fp32 subnormals: integer multiples (-50..50) of the smallest one, 2**-149. Sums and small-integer
    multiples of them are exact in fp32, so every correct order of operations gives the same bits."""
    return torch.randint(-50, 51, tuple(shape), generator=gen).float() * 2.0 ** -149


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_conv_bn_act_fp32_denormals(backend, device_type):
    """Denormal inputs with small integer weights: the exact result, bit for bit (no flush to zero)."""
    device = live_device(backend, "conv_bn_act", device_type)
    gen = torch.Generator().manual_seed(0)
    x = denormals((2, 8, 9, 7), gen)
    weight = torch.randint(-2, 3, (6, 8, 3, 3), generator=gen).float()
    bias, residual = denormals((6,), gen), denormals((2, 6, 9, 7), gen)
    x, weight, bias, residual = (t.to(device) for t in (x, weight, bias, residual))
    kwargs = dict(stride=1, padding=1, residual=residual, relu=False)
    truth = conv_bn_act_ref(x.double(), weight.double(), bias.double(), **dict(kwargs, residual=residual.double()))
    exact = truth.float()
    assert exact.abs().max() < 2.0 ** -126 and (exact != 0).float().mean() > 0.9  # subnormal, rarely zero
    torch.testing.assert_close(conv_bn_act_ref(x, weight, bias, **kwargs), exact, rtol=0, atol=0)
    y = ops.conv_bn_act(x, weight, bias, backend=backend, **kwargs)
    torch.testing.assert_close(y, exact, rtol=0, atol=0)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_multires_fuse_fp32_denormals(backend, device_type):
    device = live_device(backend, "multires_fuse", device_type)
    gen = torch.Generator().manual_seed(0)
    x, d = denormals((2, 5, 8, 8), gen), denormals((2, 5, 8, 8), gen)
    low = [denormals((2, 5, 4, 4), gen), denormals((2, 5, 1, 1), gen)]
    x, low, same = x.to(device), [z.to(device) for z in low], [d.to(device)]
    exact = multires_fuse_ref(*cast((x, low, same), torch.float64), relu=False).float()
    assert exact.abs().max() < 2.0 ** -126 and (exact != 0).float().mean() > 0.9
    torch.testing.assert_close(multires_fuse_ref(x, low, same, relu=False), exact, rtol=0, atol=0)
    y = ops.multires_fuse(x, low, same, relu=False, backend=backend)
    torch.testing.assert_close(y, exact, rtol=0, atol=0)
