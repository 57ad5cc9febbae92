"""normalize: every backend against a float64 truth under the tolerance rule (tests/tolerance.py: at most 2x the
error of the plain-PyTorch reference in the same dtype, plus the floor), every uint8 value, HWC strides that are
not dense, clear errors before any kernel runs, torch.library registration (opcheck), torch.compile and a
property-based run against the reference."""
from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st

from fuzz_harness import run_fuzz
from hrnet_fast.ops.backends import BACKENDS
from hrnet_fast.segment.ops import normalize, normalize_reference
from tolerance import FLOOR, backend_device, fail_if_a_backend_runs

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SHAPES = ((2, 7, 9, 3), (1, 1, 1, 3), (0, 4, 4, 3), (5, 6, 3), (1, 64, 48, 3))


def assert_close_to_truth(out: torch.Tensor, images: torch.Tensor, mean, std, dtype, channels_last) -> None:
    truth = normalize_reference(images.cpu(), mean, std, torch.float64)
    eager = normalize_reference(images.cpu(), mean, std, dtype)
    assert out.dtype == dtype and out.shape == truth.shape
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if truth.numel() == 0:
        return
    scale = truth.abs().max().item()
    eager_error = (eager.double() - truth).abs().max().item()
    torch.testing.assert_close(out.cpu().double(), truth, rtol=0, atol=2 * eager_error + FLOOR[dtype] * max(scale, 1))


def every_value_image(device) -> torch.Tensor:
    """All 256 values in each channel, each channel in another order."""
    v = torch.arange(256, dtype=torch.uint8)
    return torch.stack([v, v.flip(0), v.roll(77)], -1).view(1, 16, 16, 3).to(device)


@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "channels_last"))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, dtype, shape, channels_last):
    device = backend_device(backend, "seg_normalize")
    torch.manual_seed(0)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    out = normalize(images, *IMAGENET, dtype=dtype, channels_last=channels_last, backend=backend)
    assert out.device == images.device
    assert_close_to_truth(out, images, *IMAGENET, dtype, channels_last)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_uint8_value_equals_the_reference(backend, dtype):
    """Each output element is the reference's fp32 arithmetic rounded once: equal to it, value for value."""
    device = backend_device(backend, "seg_normalize")
    if backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        # Known and kept visible: the interpreter's fp32 -> bf16 store is off by one bf16 ulp on some values
        # (within the tolerance rule, test_matches_reference); compiled kernels round with cvt.rn.
        pytest.xfail("Triton interpreter's fp32->bf16 rounding differs from torch's by one ulp")
    images = every_value_image(device)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.125, 1.0)
    out = normalize(images, mean, std, dtype=dtype, backend=backend)
    torch.testing.assert_close(out.cpu(), normalize_reference(images.cpu(), mean, std, dtype), rtol=0, atol=0)
    assert out[0, 2].flatten().cpu().tolist() == (torch.arange(256).roll(77).float() / 255).to(dtype).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed(backend):
    device = backend_device(backend, "seg_normalize")
    images = torch.tensor([[[0, 255, 51]]], dtype=torch.uint8, device=device)  # one pixel, [1, 1, 3]
    out = normalize(images, (0.0, 0.5, 0.2), (1.0, 0.5, 0.4), backend=backend)
    assert out.shape == (1, 3, 1, 1)
    torch.testing.assert_close(out.cpu().flatten(), torch.tensor([0.0, 1.0, 0.0]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_images_are_copied_to_hwc(backend):
    """A crop, every other row and a CHW tensor permuted to HWC: not dense HWC, copied first, same answer."""
    device = backend_device(backend, "seg_normalize")
    torch.manual_seed(0)
    big = torch.randint(0, 256, (2, 12, 14, 3), dtype=torch.uint8, device=device)
    chw = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8, device=device)
    for images in (big[:, 2:9, 3:11], big[:, ::2], chw.permute(0, 2, 3, 1)):
        assert not images.is_contiguous()
        out = normalize(images, *IMAGENET, backend=backend)
        torch.testing.assert_close(out.cpu(), normalize_reference(images.contiguous().cpu(), *IMAGENET), rtol=0,
                                   atol=1e-6)


def test_mean_and_std_as_tensors():
    images = every_value_image("cpu")
    out = normalize(images, torch.tensor(IMAGENET[0]), torch.tensor(IMAGENET[1]))
    torch.testing.assert_close(out, normalize_reference(images, *IMAGENET), rtol=0, atol=1e-6)


IMG = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
BAD_INPUTS = {
    "float_images": ((IMG.float(), *IMAGENET), {}, r"images must be uint8 \(0..255\), got dtype torch.float32"),
    "rank2": ((IMG[0, 0], *IMAGENET), {}, r"images must be \[N, H, W, 3\] or \[H, W, 3\], got shape \(4, 3\)"),
    "rank5": ((IMG[None], *IMAGENET), {}, r"images must be \[N, H, W, 3\] or \[H, W, 3\]"),
    "four_channels": ((torch.zeros(2, 4, 4, 4, dtype=torch.uint8), *IMAGENET), {},
                      r"images must have 3 channels in the last dimension \(HWC, RGB\), got shape \(2, 4, 4, 4\)"),
    "chw_image": ((torch.zeros(3, 4, 5, dtype=torch.uint8), *IMAGENET), {}, r"images must have 3 channels"),
    "not_a_tensor": (([[0, 0, 0]], *IMAGENET), {}, r"images must be a torch.Tensor, got list"),
    "mean_two": ((IMG, (0.5, 0.5), IMAGENET[1]), {}, r"mean must be a sequence of 3 floats .* got 2 values"),
    "std_four": ((IMG, IMAGENET[0], (0.2,) * 4), {}, r"std must be a sequence of 3 floats .* got 4 values"),
    "mean_scalar": ((IMG, 0.5, IMAGENET[1]), {}, r"mean must be a sequence of 3 floats .* got float"),
    "mean_str": ((IMG, "abc", IMAGENET[1]), {}, r"mean must be a sequence of 3 floats"),
    "std_zero": ((IMG, IMAGENET[0], (0.2, 0.0, 0.2)), {}, r"std must not be 0, got \[0.2, 0.0, 0.2\]"),
    "std_nan": ((IMG, IMAGENET[0], (0.2, float("nan"), 0.2)), {}, r"std must be finite"),
    "mean_0_255": ((IMG, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)), {},
                   r"mean and std are in 0..1 units .* divide them by 255"),
    "dtype_float64": ((IMG, *IMAGENET), {"dtype": torch.float64},
                      r"dtype must be torch.float32, torch.float16 or torch.bfloat16, got torch.float64"),
    "channels_last_str": ((IMG, *IMAGENET), {"channels_last": "yes"}, r"channels_last must be a bool, got str"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_a_value_error_before_any_kernel(name, monkeypatch):
    fail_if_a_backend_runs(monkeypatch)
    args, kwargs, message = BAD_INPUTS[name]
    with pytest.raises(ValueError, match=message):
        normalize(*args, **kwargs)


@pytest.mark.parametrize("call, message", (
    (lambda op: op(torch.zeros(1, 2, 2, 4, dtype=torch.uint8), [0.5] * 3, [0.5] * 3, torch.float32, False),
     r"images must be \[N, H, W, 3\]"),
    (lambda op: op(torch.zeros(1, 2, 2, 3), [0.5] * 3, [0.5] * 3, torch.float32, False), "images must be uint8"),
    (lambda op: op(torch.zeros(1, 2, 2, 3, dtype=torch.uint8), [0.5] * 2, [0.5] * 3, torch.float32, False),
     "mean must hold 3 values"),
    (lambda op: op(torch.zeros(1, 2, 2, 3, dtype=torch.uint8), [0.5] * 3, [0.5, 0, 1], torch.float32, False),
     "std must not be 0"),
    (lambda op: op(torch.zeros(1, 2, 2, 3, dtype=torch.uint8), [0.5] * 3, [0.5] * 3, torch.int32, False),
     "dtype must be Float, Half or BFloat16"),
), ids=("channels", "dtype", "mean", "std", "out_dtype"))
def test_cpp_boundary_checks(call, message):
    """Direct callers of the compiled op get the same refusals (hrnet_fast_C, csrc/seg_ops.cpp)."""
    backend_device("cpu", "seg_normalize")
    with pytest.raises(RuntimeError, match=message):
        call(torch.ops.hrnet_fast_C.seg_normalize)


@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "channels_last"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, channels_last):
    device = backend_device(backend, "seg_normalize")
    images = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8, device=device)
    torch.library.opcheck(torch.ops.hrnet_fast.seg_normalize.default,
                          (images, list(IMAGENET[0]), list(IMAGENET[1]), torch.float16, channels_last, backend))


@pytest.mark.parametrize("backend", ("torch", "cpu"))
def test_torch_compile_fullgraph(backend):
    device = backend_device(backend, "seg_normalize")
    images = torch.randint(0, 256, (1, 8, 10, 3), dtype=torch.uint8, device=device)

    def prepare(x):
        return normalize(x, *IMAGENET, dtype=torch.bfloat16, channels_last=True, backend=backend)

    torch._dynamo.reset()
    assert torch.equal(torch.compile(prepare, fullgraph=True)(images), prepare(images))


@st.composite
def fuzz_cases(draw):
    unit = st.floats(0.0, 1.0, allow_nan=False, width=32)
    std = st.floats(0.0625, 1.0, allow_nan=False, width=32)
    three_d = draw(st.booleans())
    return dict(shape=(() if three_d else (draw(st.integers(0, 3)),)) + (draw(st.integers(1, 20)),
                                                                         draw(st.integers(1, 20)), 3),
                mean=[draw(unit) for _ in range(3)], std=[draw(std) for _ in range(3)],
                dtype=draw(st.sampled_from(DTYPES)), channels_last=draw(st.booleans()),
                strided=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)))


def _fuzz_check(case, backend, device) -> str:
    gen = torch.Generator().manual_seed(case["seed"])
    shape = list(case["shape"])
    if case["strided"]:  # every other column of an image twice as wide
        shape[-2] *= 2
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(device)
    if case["strided"]:
        images = images[..., ::2, :]
    out = normalize(images, case["mean"], case["std"], dtype=case["dtype"], channels_last=case["channels_last"],
                    backend=backend)
    assert_close_to_truth(out, images, case["mean"], case["std"], case["dtype"], case["channels_last"])
    return "matched"


@pytest.mark.parametrize("backend, device_type", (("torch", "cpu"), ("cpu", "cpu"), ("triton", "cpu"),
                                                  pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
                                                  pytest.param("triton", "cuda", marks=pytest.mark.gpu)))
def test_fuzz_against_reference(backend, device_type, record_property):
    device = backend_device(backend, "seg_normalize") if device_type == "cpu" else torch.device("cuda")
    run_fuzz(f"normalize[{backend}]", fuzz_cases(), _fuzz_check, backend, device, record_property)
