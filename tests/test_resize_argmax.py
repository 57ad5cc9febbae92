"""resize_argmax: every backend against F.interpolate + argmax (and softmax for prob), on awkward shapes, class
counts, dtypes and layouts; hand-computed cases; NaN and ties; clear errors before any kernel runs; torch.library
registration (opcheck), torch.compile and a property-based run against the reference.

Labels must equal the reference's except where a pixel's two best interpolated logits are within fp32 rounding of
each other (the blend order may differ by a rounding): every mismatch is counted and must be such a tie, checked
against the float64 truth.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from fuzz_harness import run_fuzz
from hrnet_fast.ops.backends import BACKENDS
from hrnet_fast.segment.ops import resize_argmax, resize_argmax_reference
from tolerance import backend_device, fail_if_a_backend_runs

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("nchw", "channels_last", "strided")
EPS32 = torch.finfo(torch.float32).eps

# (N, C, h, w, out_h, out_w)
CASES = (
    (1, 19, 8, 16, 32, 64),     # Cityscapes-like x4
    (2, 1, 5, 7, 11, 13),       # one class: every label 0
    (1, 150, 6, 7, 24, 28),     # ADE20K
    (1, 171, 5, 5, 17, 19),     # COCO-Stuff
    (1, 300, 4, 4, 9, 7),       # more than 256 classes: int64 labels
    (2, 19, 13, 17, 50, 61),    # non-integer scale factors
    (1, 7, 9, 11, 9, 11),       # same size: no interpolation
    (1, 5, 20, 24, 7, 9),       # downsizing (no antialias)
    (1, 3, 6, 5, 1, 8),         # out_h = 1
    (1, 3, 6, 5, 8, 1),         # out_w = 1
    (0, 19, 4, 4, 8, 8),        # empty batch
    (1, 150, 4, 40, 6, 300),    # CPU: two column stripes
    (1, 600, 3, 5, 4, 130),     # CPU: three stripes of one block, int64
)
# The interpreted Triton backend runs these (a Python loop over classes per program).
TRITON_CASES = (CASES[0], CASES[1], CASES[4], CASES[5], CASES[6], CASES[7], CASES[8], CASES[9], CASES[10])


def case_id(case) -> str:
    n, c, h, w, oh, ow = case
    return f"{n}x{c}x{h}x{w}-to{oh}x{ow}"


def make_logits(shape, dtype, layout, device, scale: float = 3.0) -> torch.Tensor:
    n, c, h, w = shape
    if layout == "strided":
        base = (torch.randn(n, 2 * c, h + 1, 2 * w) * scale).to(device=device, dtype=dtype)
        return base[:, ::2, 1:, ::2]
    t = (torch.randn(n, c, h, w) * scale).to(device=device, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t


def check_labels(labels: torch.Tensor, logits: torch.Tensor, out_h: int, out_w: int, align_corners: bool) -> int:
    """Asserts labels are the reference's except at fp32 ties (the fused label's truth value within rounding of the
    truth's maximum); returns how many such ties differ."""
    expected = resize_argmax_reference(logits, out_h, out_w, align_corners, out_dtype=torch.int64)
    truth = F.interpolate(logits.double(), size=(out_h, out_w), mode="bilinear", align_corners=align_corners)
    got = labels.long()
    differ = got != expected
    if not differ.any():
        return 0
    # Rounding of a 4-tap fp32 blend: a few ulps of the largest logit the pixel reads.
    tol = 8 * EPS32 * logits.double().abs().amax(dim=(1, 2, 3)).view(-1, 1, 1).expand_as(got)[differ]
    at_got = truth.gather(1, got.unsqueeze(1)).squeeze(1)[differ]
    at_max = truth.amax(1)[differ]
    gap = at_max - at_got
    assert (gap <= tol).all(), (f"{int(differ.sum())} labels differ from the reference; not ties at "
                                f"{int((gap > tol).sum())}, worst gap {gap.max().item():.3g} > {tol.max().item():.3g}")
    return int(differ.sum())


def check_prob(prob: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, out_h: int, out_w: int,
               align_corners: bool) -> None:
    """prob = softmax of the float64 truth at the returned label, within 2x the fp32 reference's error + 1e-5."""
    truth = torch.softmax(F.interpolate(logits.double(), size=(out_h, out_w), mode="bilinear",
                                        align_corners=align_corners), 1)
    _, eager = resize_argmax_reference(logits, out_h, out_w, align_corners, with_prob=True)
    truth_at_ref = truth.amax(1)
    eager_error = (eager.double() - truth_at_ref).abs().max().item() if prob.numel() else 0.0
    want = truth.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    assert prob.dtype == torch.float32 and prob.shape == labels.shape
    torch.testing.assert_close(prob.double(), want, rtol=0, atol=2 * eager_error + 1e-5)


# (dtype, layout) pairs: every layout in fp32, each 16-bit dtype in two layouts.
DTYPE_LAYOUTS = ((torch.float32, "nchw"), (torch.float32, "channels_last"), (torch.float32, "strided"),
                 (torch.float16, "channels_last"), (torch.float16, "nchw"), (torch.bfloat16, "strided"),
                 (torch.bfloat16, "channels_last"))


def backend_cases():
    """(backend, dtype, layout, case): the torch backend (the reference itself) in fp32 NCHW only, the
    interpreted Triton backend on TRITON_CASES in three (dtype, layout) pairs."""
    for backend in BACKENDS:
        for dtype, layout in DTYPE_LAYOUTS:
            for case in CASES:
                if backend == "torch" and (dtype, layout) != DTYPE_LAYOUTS[0]:
                    continue
                if backend == "triton" and (case not in TRITON_CASES or (dtype, layout) not in DTYPE_LAYOUTS[::3]):
                    continue
                yield pytest.param(backend, dtype, layout, case,
                                   id=f"{backend}-{str(dtype)[6:]}-{layout}-{case_id(case)}")


@pytest.mark.parametrize("align_corners", (False, True), ids=("half_pixel", "align_corners"))
@pytest.mark.parametrize("backend, dtype, layout, case", backend_cases())
def test_matches_reference(backend, dtype, layout, case, align_corners):
    device = backend_device(backend, "resize_argmax")
    torch.manual_seed(0)
    n, c, h, w, oh, ow = case
    logits = make_logits((n, c, h, w), dtype, layout, device)
    labels, prob = resize_argmax(logits, oh, ow, align_corners, with_prob=True, backend=backend)
    assert labels.shape == (n, oh, ow) and labels.device == logits.device
    assert labels.dtype == (torch.uint8 if c <= 256 else torch.int64)
    ties = check_labels(labels.cpu(), logits.cpu(), oh, ow, align_corners)
    assert ties <= max(1, labels.numel() // 1000), f"{ties} ties of {labels.numel()} pixels: more than rounding"
    check_prob(prob.cpu(), labels.cpu(), logits.cpu(), oh, ow, align_corners)
    alone = resize_argmax(logits, oh, ow, align_corners, backend=backend)
    assert torch.equal(alone, labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cityscapes_size_on_cpu_threads(backend):
    """19 x 64 x 128 -> 256 x 512 (a quarter of Cityscapes' 1024 x 2048), both conventions: rows split over
    threads, the row-blend cache reused across rows."""
    if backend == "triton":
        pytest.skip("too large for the Triton interpreter; test_matches_reference covers its kernel")
    device = backend_device(backend, "resize_argmax")
    torch.manual_seed(1)
    logits = make_logits((1, 19, 64, 128), torch.float32, "nchw", device)
    for align_corners in (False, True):
        labels = resize_argmax(logits, 256, 512, align_corners, backend=backend)
        ties = check_labels(labels.cpu(), logits.cpu(), 256, 512, align_corners)
        assert ties <= 64


def test_tie_checker_catches_a_wrong_label():
    """check_labels must fail on a label that is not a tie: the tests above can fail."""
    torch.manual_seed(0)
    logits = make_logits((1, 4, 3, 3), torch.float32, "nchw", "cpu")
    labels = resize_argmax_reference(logits, 6, 6, False)
    wrong = labels.clone()
    wrong[0, 2, 3] = (wrong[0, 2, 3] + 1) % 4
    with pytest.raises(AssertionError, match="not ties"):
        check_labels(wrong, logits, 6, 6, False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed(backend):
    """2 classes, 1 x 2 -> 1 x 4, half-pixel: class 0's logit goes 0, 0, 0 -> column taps at source x = -0.25
    (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1): class 1 = 4 * x - 2 -> -2, -1, 1, 2 with the clamp; so labels
    0, 0, 1, 1 and prob 1 / (1 + e^-|l1|)."""
    device = backend_device(backend, "resize_argmax")
    logits = torch.tensor([[[[0.0, 0.0]], [[-2.0, 2.0]]]], device=device)
    labels, prob = resize_argmax(logits, 1, 4, False, with_prob=True, backend=backend)
    assert labels.cpu().tolist() == [[[0, 0, 1, 1]]]
    l1 = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    torch.testing.assert_close(prob.cpu()[0, 0], 1 / (1 + torch.exp(-l1.abs())), rtol=0, atol=1e-6)
    # align_corners: source x = 0, 1/3, 2/3, 1 -> l1 = -2, -2/3, 2/3, 2.
    labels, prob = resize_argmax(logits, 1, 4, True, with_prob=True, backend=backend)
    assert labels.cpu().tolist() == [[[0, 0, 1, 1]]]
    l1 = torch.tensor([-2.0, -2 / 3, 2 / 3, 2.0])
    torch.testing.assert_close(prob.cpu()[0, 0], 1 / (1 + torch.exp(-l1.abs())), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_ties_take_the_first_class(backend, dtype):
    """Two equal classes: every label 0 (torch.argmax's first maximum) and prob exactly 1/2; a third equal class
    after a smaller one: still 0, prob 1/3 where all three tie."""
    device = backend_device(backend, "resize_argmax")
    torch.manual_seed(0)
    base = (torch.randint(-8, 8, (2, 1, 5, 6)) / 4).to(device=device, dtype=dtype)  # exact in every dtype
    labels, prob = resize_argmax(torch.cat([base, base], 1), 9, 11, False, with_prob=True, backend=backend)
    assert (labels == 0).all()
    assert (prob == 0.5).all()
    three = torch.cat([base, base - 1, base], 1)
    labels, prob = resize_argmax(three, 9, 11, True, with_prob=True, backend=backend)
    assert (labels == 0).all()
    expected = 1 / (2 + torch.exp(torch.tensor(-1.0)))
    torch.testing.assert_close(prob.cpu(), torch.full_like(prob.cpu(), expected.item()), rtol=2e-6, atol=0)


@pytest.mark.parametrize("align_corners", (False, True), ids=("half_pixel", "align_corners"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_counts_as_the_maximum(backend, align_corners):
    """As torch.argmax on CPU: a pixel whose taps read a NaN logit takes the first NaN class; its prob is NaN.
    Pixels away from the NaN are unaffected."""
    device = backend_device(backend, "resize_argmax")
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 6, 7, device=device)
    logits[0, 3, 2, 4] = float("nan")
    logits[0, 1, 2, 5] = float("nan")
    labels, prob = resize_argmax(logits, 13, 15, align_corners, with_prob=True, backend=backend)
    expected, expected_prob = resize_argmax_reference(logits.cpu(), 13, 15, align_corners, with_prob=True)
    nan_pixels = torch.isnan(expected_prob)
    assert nan_pixels.sum() > 0 and (~nan_pixels).sum() > 0
    assert torch.equal(labels.cpu()[nan_pixels], expected[nan_pixels])
    assert torch.equal(torch.isnan(prob.cpu()), nan_pixels)
    assert torch.equal(labels.cpu()[~nan_pixels], expected[~nan_pixels])
    all_nan = torch.full((1, 3, 2, 2), float("nan"), device=device)
    assert (resize_argmax(all_nan, 3, 3, align_corners, backend=backend) == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_dtype(backend):
    device = backend_device(backend, "resize_argmax")
    torch.manual_seed(0)
    logits = torch.randn(1, 19, 4, 5, device=device)
    wide = resize_argmax(logits, 8, 10, False, out_dtype=torch.int64, backend=backend)
    narrow = resize_argmax(logits, 8, 10, False, out_dtype=torch.uint8, backend=backend)
    assert wide.dtype == torch.int64 and narrow.dtype == torch.uint8
    assert torch.equal(wide, narrow.long())
    assert resize_argmax(torch.randn(1, 256, 2, 2, device=device), 3, 3, False, backend=backend).dtype == torch.uint8
    assert resize_argmax(torch.randn(1, 257, 2, 2, device=device), 3, 3, False, backend=backend).dtype == torch.int64


BAD_INPUTS = {
    "float64": (lambda: (torch.zeros(1, 3, 4, 4, dtype=torch.float64), 8, 8, False), {},
                r"logits must be float32, float16 or bfloat16, got dtype torch.float64"),
    "integer": (lambda: (torch.zeros(1, 3, 4, 4, dtype=torch.int64), 8, 8, False), {},
                r"logits must be float32, float16 or bfloat16"),
    "rank3": (lambda: (torch.zeros(3, 4, 4), 8, 8, False), {}, r"logits must be a 4-D \[N, C, h, w\] tensor"),
    "not_a_tensor": (lambda: ([[1.0]], 8, 8, False), {}, r"logits must be a torch.Tensor, got list"),
    "no_classes": (lambda: (torch.zeros(1, 0, 4, 4), 8, 8, False), {}, r"logits must have at least one class"),
    "empty_input": (lambda: (torch.zeros(1, 3, 0, 4), 8, 8, False), {}, r"logits has an empty spatial size 0x4"),
    "out_h_zero": (lambda: (torch.zeros(1, 3, 4, 4), 0, 8, False), {}, r"out_h must be positive, got 0"),
    "out_w_negative": (lambda: (torch.zeros(1, 3, 4, 4), 8, -2, False), {}, r"out_w must be positive, got -2"),
    "out_h_float": (lambda: (torch.zeros(1, 3, 4, 4), 8.0, 8, False), {}, r"out_h must be an int, got float"),
    "align_corners_none": (lambda: (torch.zeros(1, 3, 4, 4), 8, 8, None), {},
                           r"align_corners must be a bool, got NoneType"),
    "with_prob_int": (lambda: (torch.zeros(1, 3, 4, 4), 8, 8, False), {"with_prob": 1},
                      r"with_prob must be a bool, got int"),
    "uint8_too_many_classes": (lambda: (torch.zeros(1, 300, 2, 2), 4, 4, False), {"out_dtype": torch.uint8},
                               r"out_dtype=torch.uint8 holds labels 0..255, but logits has 300 classes"),
    "out_dtype_int32": (lambda: (torch.zeros(1, 3, 2, 2), 4, 4, False), {"out_dtype": torch.int32},
                        r"out_dtype must be torch.uint8, torch.int64 or None, got torch.int32"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_a_value_error_before_any_kernel(name, monkeypatch):
    fail_if_a_backend_runs(monkeypatch)
    make, kwargs, message = BAD_INPUTS[name]
    with pytest.raises(ValueError, match=message):
        resize_argmax(*make(), **kwargs)


def test_grad_is_refused():
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match="resize_argmax is inference-only"):
        resize_argmax(logits, 4, 4, False)
    with torch.no_grad():
        assert resize_argmax(logits, 4, 4, False).shape == (1, 4, 4)


@pytest.mark.parametrize("call, message", (
    (lambda op: op(torch.zeros(1, 3, 2, 2), 0, 4, False, False, torch.uint8), "out_h and out_w must be positive"),
    (lambda op: op(torch.zeros(1, 300, 2, 2), 4, 4, False, False, torch.uint8), "uint8 labels hold 0..255"),
    (lambda op: op(torch.zeros(1, 3, 2, 2, dtype=torch.float64), 4, 4, False, False, torch.uint8),
     "logits must be Float, Half or BFloat16"),
    (lambda op: op(torch.zeros(1, 3, 2, 2), 4, 4, False, False, torch.int32), "out_dtype must be Byte or Long"),
), ids=("size", "uint8", "dtype", "out_dtype"))
def test_cpp_boundary_checks(call, message):
    """Direct callers of the compiled op get the same refusals (hrnet_fast_C, csrc/seg_ops.cpp)."""
    backend_device("cpu", "resize_argmax")
    with pytest.raises(RuntimeError, match=message):
        call(torch.ops.hrnet_fast_C.resize_argmax)


@pytest.mark.parametrize("with_prob", (False, True))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, layout, with_prob):
    device = backend_device(backend, "resize_argmax")
    torch.manual_seed(0)
    logits = make_logits((2, 5, 4, 6), torch.float32, layout, device)
    torch.library.opcheck(torch.ops.hrnet_fast.resize_argmax.default,
                          (logits, 7, 9, False, with_prob, torch.uint8, backend))


@pytest.mark.parametrize("backend", ("torch", "cpu"))
def test_torch_compile_fullgraph(backend):
    device = backend_device(backend, "resize_argmax")
    torch.manual_seed(0)
    logits = make_logits((1, 19, 6, 8), torch.float32, "channels_last", device)

    def segment(x):
        return resize_argmax(x, 24, 32, False, with_prob=True, backend=backend)

    torch._dynamo.reset()
    compiled = torch.compile(segment, fullgraph=True)
    for a, b in zip(compiled(logits), segment(logits)):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------------- fuzz
@st.composite
def fuzz_cases(draw, interpreted: bool):
    classes = draw(st.sampled_from((1, 2, 3, 19, 150, 171, 257)) if not interpreted else st.sampled_from((1, 2, 19)))
    size = st.integers(1, 12 if interpreted else 24)
    return dict(n=draw(st.integers(0, 2)), c=classes, h=draw(size), w=draw(size), out_h=draw(size),
                out_w=draw(size), align_corners=draw(st.booleans()), with_prob=draw(st.booleans()),
                dtype=draw(st.sampled_from(DTYPES)), layout=draw(st.sampled_from(LAYOUTS)),
                seed=draw(st.integers(0, 2 ** 16)))


def _fuzz_check(case, backend, device) -> str:
    gen = torch.Generator().manual_seed(case["seed"])
    shape = (case["n"], case["c"], case["h"], case["w"])
    logits = (torch.randn(shape, generator=gen) * 4).to(device=device, dtype=case["dtype"])
    if case["layout"] == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    elif case["layout"] == "strided":
        logits = logits.transpose(2, 3).contiguous().transpose(2, 3)
    out = resize_argmax(logits, case["out_h"], case["out_w"], case["align_corners"], with_prob=case["with_prob"],
                        backend=backend)
    labels, prob = out if case["with_prob"] else (out, None)
    assert labels.shape == (case["n"], case["out_h"], case["out_w"])
    ties = check_labels(labels.cpu(), logits.cpu(), case["out_h"], case["out_w"], case["align_corners"])
    if prob is not None:
        check_prob(prob.cpu(), labels.cpu(), logits.cpu(), case["out_h"], case["out_w"], case["align_corners"])
    return "matched" if ties == 0 else "matched with ties"


@pytest.mark.parametrize("backend, device_type", (("torch", "cpu"), ("cpu", "cpu"), ("triton", "cpu"),
                                                  pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
                                                  pytest.param("triton", "cuda", marks=pytest.mark.gpu)))
def test_fuzz_against_reference(backend, device_type, record_property):
    device = backend_device(backend, "resize_argmax") if device_type == "cpu" else torch.device("cuda")
    interpreted = backend == "triton" and device.type == "cpu"
    run_fuzz(f"resize_argmax[{backend}]", fuzz_cases(interpreted), _fuzz_check, backend, device, record_property)


def test_cpu_baseline_isa_loops():
    """The CPU kernel's loops compiled for the baseline ISA (ATEN_CPU_CAPABILITY=default picks them, as for ATen's
    kernels), which no CI CPU would otherwise run: the CPU backend's reference, tie, NaN and hand-computed tests
    in a child process."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    selection = "cpu and (matches_reference or hand_computed or exact_ties or nan_counts) and not baseline"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection,
                          str(Path(__file__).resolve())], cwd=root, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]
