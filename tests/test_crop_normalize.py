"""crop_normalize: hand-computed crops, every backend against the float64 reference (awkward sizes, boxes outside
the image, dtypes, layouts, non-contiguous inputs, a hypothesis fuzz), bad input refused before any kernel, and
the torch.library registration (opcheck)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz_profiles import fuzz_settings
from hrnet_fast.pose.ops import crop_normalize, crop_normalize_reference
from pose_ops_support import FUZZ_TARGETS, TARGETS, assert_within_rule, fail_if_a_kernel_runs, live

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXPECTED_VARIANTS = 4  # compiled by tests/pose_gpu_static.py
OP = "crop_normalize"


def image_2x2() -> torch.Tensor:
    """Channel c of pixel [r, col] is 10 + 40 (2 r + col) + 10 c."""
    return torch.tensor([[[10, 20, 30], [50, 60, 70]], [[90, 100, 110], [130, 140, 150]]], dtype=torch.uint8)


def theta_of(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 2, 3)


def check(image, theta, out_h, out_w, dtype, channels_last, backend, device, mean=MEAN, std=STD):
    """Runs the op and checks it against the float64 reference under the tolerance rule; returns the output."""
    out = crop_normalize(image.to(device), theta.to(device), out_h, out_w, mean, std, dtype, channels_last,
                         backend=backend)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.shape == (theta.shape[0], 3, out_h, out_w) and out.dtype == dtype and out.device.type == device.type
    assert out.is_contiguous(memory_format=fmt)
    truth = crop_normalize_reference(image, theta.double(), out_h, out_w, mean, std, torch.float64)
    eager = crop_normalize_reference(image, theta, out_h, out_w, mean, std, dtype)
    assert_within_rule(out, truth, eager)
    return out


# ---------------------------------------------------------------------------------------- hand-computed cases

@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_half_pixel_shift_of_a_2x2_image(backend, device_type):
    """x_in = x + 0.5, y_in = y + 0.5: output [0, 0] averages all four pixels, [0, 1] the right column's two
    (the taps past the image add 0), [1, 1] a quarter of the last pixel. mean 0, std 1/255: out = v."""
    device = live(backend, OP, device_type)
    out = crop_normalize(image_2x2().to(device), theta_of(1, 0, 0.5, 0, 1, 0.5).to(device), 2, 2, (0, 0, 0),
                         (1 / 255,) * 3, backend=backend)
    expected = torch.tensor([[[70.0, 45.0], [55.0, 32.5]], [[80.0, 50.0], [60.0, 35.0]],
                             [[90.0, 55.0], [65.0, 37.5]]])
    torch.testing.assert_close(out[0].cpu(), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_identity_map_normalises_each_pixel(backend, device_type):
    device = live(backend, OP, device_type)
    image = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = crop_normalize(image.to(device), theta_of(1, 0, 0, 0, 1, 0).to(device), 5, 7, MEAN, STD, backend=backend)
    expected = (image.permute(2, 0, 1).double() / 255 - torch.tensor(MEAN).double()[:, None, None]) / \
        torch.tensor(STD).double()[:, None, None]
    torch.testing.assert_close(out[0].cpu().double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_boxes_outside_the_image(backend, device_type):
    """A box entirely outside reads only zero taps: out = -mean / std. A box straddling the left edge by half a
    pixel (x_in = x - 0.5) gives column 0 half of the image's column 0."""
    device = live(backend, OP, device_type)
    image = image_2x2()
    theta = theta_of(1, 0, 50, 0, 1, -40, 1, 0, -0.5, 0, 1, 0)
    out = crop_normalize(image.to(device), theta.to(device), 2, 3, (0, 0, 0), (1 / 255,) * 3, backend=backend).cpu()
    torch.testing.assert_close(out[0], torch.zeros(3, 2, 3), rtol=0, atol=0)
    torch.testing.assert_close(out[1, :, :, 0], image[:, 0].T.float() / 2, rtol=0, atol=2e-5)
    torch.testing.assert_close(out[1, :, :, 1], (image[:, 0].T.float() + image[:, 1].T.float()) / 2, rtol=0,
                               atol=2e-5)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_one_pixel_image(backend, device_type):
    """A 1x1 image sampled at its pixel, a quarter pixel right of it (3/4 of it) and two pixels away (nothing)."""
    device = live(backend, OP, device_type)
    image = torch.tensor([[[200, 100, 40]]], dtype=torch.uint8)
    theta = theta_of(0, 0, 0, 0, 0, 0, 0, 0, 0.25, 0, 0, 0, 0, 0, 2, 0, 0, 0)
    out = crop_normalize(image.to(device), theta.to(device), 1, 1, (0, 0, 0), (1 / 255,) * 3, backend=backend).cpu()
    torch.testing.assert_close(out[:, :, 0, 0], torch.tensor([[200.0, 100, 40], [150, 75, 30], [0, 0, 0]]), rtol=0,
                               atol=2e-5)


@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "channels_last"))
@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_no_boxes(backend, device_type, channels_last):
    device = live(backend, OP, device_type)
    out = crop_normalize(image_2x2().to(device), torch.zeros(0, 2, 3, device=device), 4, 3, MEAN, STD,
                         torch.float16, channels_last, backend=backend)
    assert out.shape == (0, 3, 4, 3) and out.dtype == torch.float16


# ------------------------------------------------------------------------------------ against the reference

def rotations(k: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """K inverse maps: rotations, scales and shifts that put crops across and beyond an h x w image."""
    angle = torch.rand(k, generator=gen) * 2 * math.pi
    scale = 0.3 + 2 * torch.rand(k, generator=gen)
    shift = (torch.rand(k, 2, generator=gen) * 1.6 - 0.3) * torch.tensor([w, h])
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "channels_last"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_matches_reference(backend, device_type, dtype, channels_last):
    """Odd image and crop sizes, rotated and scaled boxes partly or wholly outside the image."""
    device = live(backend, OP, device_type)
    gen = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (13, 17, 3), dtype=torch.uint8, generator=gen)
    check(image, rotations(5, 13, 17, gen), 9, 7, dtype, channels_last, backend, device)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_non_contiguous_inputs(backend, device_type):
    """A strided image view and a transposed theta give what their contiguous copies give."""
    device = live(backend, OP, device_type)
    gen = torch.Generator().manual_seed(4)
    base = torch.randint(0, 256, (22, 9, 4), dtype=torch.uint8, generator=gen)
    image = base[::2, :, 1:]
    theta = rotations(3, 11, 9, gen).transpose(0, 2).contiguous().transpose(0, 2)
    assert not image.is_contiguous() and not theta.is_contiguous()
    out = check(image, theta, 6, 5, torch.float32, False, backend, device)
    dense = crop_normalize(image.contiguous().to(device), theta.contiguous().to(device), 6, 5, MEAN, STD,
                           backend=backend)
    torch.testing.assert_close(out, dense, rtol=0, atol=0)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_enormous_coordinates_read_nothing(backend, device_type):
    """Finite maps whose coordinates overflow to +-inf or NaN, or reach 1e30, sample only the zero border."""
    device = live(backend, OP, device_type)
    theta = theta_of(3e38, 3e38, 0, 0, 1, 0, 1e30, 0, 0, 0, 1e30, 0, -3e38, 2.9e38, 1, 0, 0, 0)
    out = check(image_2x2(), theta, 3, 4, torch.float32, False, backend, device)
    shift = (-torch.tensor(MEAN) / torch.tensor(STD))[:, None]
    torch.testing.assert_close(out[:, :, 1:, 1:].cpu().reshape(3, 3, -1), shift.expand(3, 3, 6), rtol=0, atol=1e-6)


@st.composite
def crop_cases(draw):
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    return dict(h=h, w=w, k=draw(st.integers(0, 4)), out_h=draw(st.integers(1, 12)), out_w=draw(st.integers(1, 12)),
                dtype=draw(st.sampled_from(DTYPES)), channels_last=draw(st.booleans()),
                sliced=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 31 - 1)),
                mean=tuple(draw(st.floats(0, 1)) for _ in range(3)),
                std=tuple(draw(st.floats(0.05, 2)) for _ in range(3)))


@pytest.mark.parametrize("backend, device_type", FUZZ_TARGETS)
def test_fuzz(backend, device_type):
    device = live(backend, OP, device_type)

    @fuzz_settings(backend == "triton" and device.type == "cpu")
    @given(case=crop_cases())
    def property_holds(case):
        gen = torch.Generator().manual_seed(case["seed"])
        base = torch.randint(0, 256, (case["h"], 2 * case["w"], 3), dtype=torch.uint8, generator=gen)
        image = base[:, ::2] if case["sliced"] else base[:, :case["w"]]
        check(image, rotations(case["k"], case["h"], case["w"], gen), case["out_h"], case["out_w"], case["dtype"],
              case["channels_last"], backend, device, case["mean"], case["std"])

    property_holds()


# ------------------------------------------------------------------------------------------------ bad input

def _img(*shape, dtype=torch.uint8):
    return torch.zeros(shape, dtype=dtype)


BAD = {
    "image float": (dict(image=_img(4, 4, 3, dtype=torch.float32)), r"image must be uint8"),
    "image CHW": (dict(image=_img(3, 4, 4)), r"image must be an \[H, W, 3\]"),
    "image 4-D": (dict(image=_img(1, 4, 4, 3)), r"image must be an \[H, W, 3\]"),
    "image empty": (dict(image=_img(0, 4, 3)), r"image is empty"),
    "image not a tensor": (dict(image=[[0]]), r"image must be a torch\.Tensor"),
    "theta 2x2": (dict(theta=torch.zeros(1, 2, 2)), r"theta must be a \[K, 2, 3\]"),
    "theta 2-D": (dict(theta=torch.zeros(2, 3)), r"theta must be a \[K, 2, 3\]"),
    "theta float64": (dict(theta=torch.zeros(1, 2, 3, dtype=torch.float64)), r"theta must be float32"),
    "theta NaN": (dict(theta=torch.tensor([[[1.0, 0, float("nan")], [0, 1, 0]]])), r"theta holds NaN or infinite"),
    "theta inf": (dict(theta=torch.tensor([[[1.0, 0, 0], [0, float("inf"), 0]]])), r"theta holds NaN or infinite"),
    "theta on another device": (dict(theta=torch.zeros(1, 2, 3, device="meta")), r"theta is on meta but image is on"),
    "out_h zero": (dict(out_h=0), r"out_h must be a positive int"),
    "out_w float": (dict(out_w=4.0), r"out_w must be a positive int"),
    "mean of 2": (dict(mean=(0.5, 0.5)), r"mean must be 3 finite floats"),
    "mean not numbers": (dict(mean="abc"), r"mean must be a sequence of 3 floats"),
    "std zero": (dict(std=(0.2, 0.0, 0.2)), r"std must not hold a zero"),
    "std NaN": (dict(std=(0.2, float("nan"), 0.2)), r"std must be 3 finite floats"),
    "dtype int": (dict(dtype=torch.int32), r"dtype must be torch\.float32, torch\.float16 or torch\.bfloat16"),
    "channels_last not bool": (dict(channels_last=1), r"channels_last must be a bool"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_raises_before_any_kernel(monkeypatch, name):
    changes, pattern = BAD[name]
    args = dict(image=_img(4, 4, 3), theta=torch.zeros(1, 2, 3), out_h=4, out_w=4, mean=MEAN, std=STD,
                dtype=torch.float32, channels_last=False)
    args.update(changes)
    fail_if_a_kernel_runs(monkeypatch)
    with pytest.raises(ValueError, match=pattern):
        crop_normalize(**args)


def test_theta_requiring_grad_is_refused():
    with pytest.raises(RuntimeError, match="crop_normalize is inference-only"):
        crop_normalize(_img(4, 4, 3), torch.zeros(1, 2, 3, requires_grad=True), 2, 2, MEAN, STD, backend="torch")


@pytest.mark.parametrize("backend", ("cpu", "cuda"))
def test_native_op_checks_its_boundary(backend):
    """torch.ops.hrnet_fast_C.crop_normalize called directly refuses what its raw-pointer kernels cannot take."""
    live(backend, OP, backend)
    native = torch.ops.hrnet_fast_C.crop_normalize
    with pytest.raises(RuntimeError, match=r"image must be \[H, W, 3\]"):
        native(_img(3, 4, 4).to(backend), torch.zeros(1, 2, 3, device=backend), 2, 2, MEAN, STD, torch.float32, False)
    with pytest.raises(RuntimeError, match=r"mean and std take 3 values"):
        native(_img(4, 4, 3).to(backend), torch.zeros(1, 2, 3, device=backend), 2, 2, [0.5], STD, torch.float32, False)


# ------------------------------------------------------------------------------------------- registration

@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "channels_last"))
@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_opcheck(backend, device_type, channels_last):
    device = live(backend, OP, device_type)
    gen = torch.Generator().manual_seed(5)
    image = torch.randint(0, 256, (7, 6, 3), dtype=torch.uint8, generator=gen).to(device)
    theta = rotations(2, 7, 6, gen).to(device)
    torch.library.opcheck(torch.ops.hrnet_fast.crop_normalize.default,
                          (image, theta, 5, 4, list(MEAN), list(STD), torch.float16, channels_last, backend))


@pytest.mark.static_gpu
def test_triton_kernel_compiles_for_sm90_without_spills():
    """The GPU code path the interpreter does not compile: every dtype and variant on pose pipeline shapes
    (tests/pose_gpu_static.py), for sm_90, down to cubins; none may spill registers."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "pose_gpu_static.py"), OP],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == EXPECTED_VARIANTS, records
    spilling = [r for r in records if r["spill_bytes"]]
    assert not spilling, spilling
