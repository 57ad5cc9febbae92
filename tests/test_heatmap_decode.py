"""heatmap_decode: hand-computed decodes (a sub-pixel Gaussian peak, ties, non-positive and constant maps, maps too
small to refine, the flip merge), DARK's log clamp where it matters, every backend against the float64 reference
(dtypes, blur sizes, non-contiguous inputs, a hypothesis fuzz), bad input refused before any kernel, and the
torch.library registration (opcheck)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz_profiles import fuzz_settings
from hrnet_fast.ops.pose_reference import _blurred_log
from hrnet_fast.pose.ops import heatmap_decode, heatmap_decode_reference
from pose_ops_support import FUZZ_TARGETS, TARGETS, assert_within_rule, fail_if_a_kernel_runs, live

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
METHODS = ("classic", "dark")
EXPECTED_VARIANTS = 7  # compiled by tests/pose_gpu_static.py
OP = "heatmap_decode"


def gaussian(h: int, w: int, x: float, y: float, sigma: float = 2.0) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    return torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2)).float()


def identity_boxes(k: int, h: int, w: int):
    """Centres and scales under which image pixels are heatmap pixels: x_img = cx + (x - w/2) w / w = x."""
    return torch.tensor([[w / 2, h / 2]] * k).reshape(k, 2), torch.tensor([[float(w), float(h)]] * k).reshape(k, 2)


def decode(heatmaps, method, backend, device, centers=None, scales=None, **kwargs):
    k, _, h, w = heatmaps.shape
    if centers is None:
        centers, scales = identity_boxes(k, h, w)
    flipped = kwargs.pop("flipped", None)
    out = heatmap_decode(heatmaps.to(device), centers.to(device), scales.to(device), method,
                         flipped=None if flipped is None else flipped.to(device), backend=backend, **kwargs)
    assert out.shape == (k, heatmaps.shape[1], 3) and out.dtype == torch.float32 and out.device.type == device.type
    return out.cpu()


def check(heatmaps, centers, scales, method, backend, device, flipped=None, flip_index=None, shift_flipped=False,
          blur_kernel=11):
    """The op against the float64 reference under the tolerance rule; returns the op's result."""
    out = decode(heatmaps, method, backend, device, centers, scales, flipped=flipped, flip_index=flip_index,
                 shift_flipped=shift_flipped, blur_kernel=blur_kernel)
    index = None if flip_index is None else torch.as_tensor(flip_index)
    truth = heatmap_decode_reference(heatmaps.double(), centers.double(), scales.double(), method,
                                     None if flipped is None else flipped.double(), index, shift_flipped, blur_kernel)
    eager = heatmap_decode_reference(heatmaps, centers, scales, method, flipped, index, shift_flipped, blur_kernel)
    assert_within_rule(out, truth, eager)
    return out


# ---------------------------------------------------------------------------------------- hand-computed cases

@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_gaussian_peak_at_a_known_sub_pixel_location(backend, device_type):
    """A sigma-2 Gaussian at (10.3, 7.6) on a 64x48 map: DARK recovers it within 0.05 px; classic takes the argmax
    (10, 8) a quarter pixel toward the larger neighbours: (10.25, 7.75). The score is the peak value."""
    device = live(backend, OP, device_type)
    hm = gaussian(64, 48, 10.3, 7.6)[None, None]
    dark = decode(hm, "dark", backend, device)[0, 0]
    assert abs(dark[0].item() - 10.3) < 0.05 and abs(dark[1].item() - 7.6) < 0.05, dark
    classic = decode(hm, "classic", backend, device)[0, 0]
    torch.testing.assert_close(classic, torch.tensor([10.25, 7.75, hm[0, 0, 8, 10].item()]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_back_to_image_pixels(backend, device_type):
    """Crop centred at (100, 50), 96 x 128 image pixels over a 48 x 64 map (2 px per map pixel): map (10.25, 7.75)
    is 100 + (10.25 - 24) * 2 = 72.5, 50 + (7.75 - 32) * 2 = 1.5."""
    device = live(backend, OP, device_type)
    hm = gaussian(64, 48, 10.3, 7.6)[None, None]
    out = decode(hm, "classic", backend, device, torch.tensor([[100.0, 50.0]]), torch.tensor([[96.0, 128.0]]))
    torch.testing.assert_close(out[0, 0, :2], torch.tensor([72.5, 1.5]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_ties_take_the_first_maximum_in_row_major_order(backend, device_type, method):
    """Equal peaks at (x, y) = (20, 7) and (8, 16), and at (21, 12) and (8, 12) on one row: the first one read
    wins. Each sits farther than the blur and the stencil reach (5 + 2) from the other and from the border, so its
    surroundings are symmetric and neither method moves it."""
    device = live(backend, OP, device_type)
    hm = torch.zeros(1, 2, 24, 30)
    hm[0, 0, 7, 20] = hm[0, 0, 16, 8] = 1.0
    hm[0, 1, 12, 21] = hm[0, 1, 12, 8] = 0.5
    out = decode(hm, method, backend, device)
    torch.testing.assert_close(out[0], torch.tensor([[20.0, 7.0, 1.0], [8.0, 12.0, 0.5]]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_non_positive_and_constant_maps_sit_at_the_origin(backend, device_type, method):
    """A peak <= 0 puts the joint at heatmap (0, 0), score the peak; a constant map's first maximum is (0, 0)."""
    device = live(backend, OP, device_type)
    negative = -1 - gaussian(12, 10, 4.0, 6.0)
    hm = torch.stack([negative, torch.zeros(12, 10), torch.full((12, 10), 0.3),
                      torch.full((12, 10), float("-inf"))])[None]
    out = decode(hm, method, backend, device)
    peak = negative.max().item()
    expected = torch.tensor([[0.0, 0.0, peak], [0, 0, 0], [0, 0, 0.3], [0, 0, float("-inf")]])
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_maps_too_small_to_refine(backend, device_type):
    """DARK needs 1 < px < w - 2 and 1 < py < h - 2, so on a 4 x 4 map it never moves the argmax, while classic's
    1 < px < w - 1 lets it step at (2, 2). On 1 x 1 and 2 x 3 maps neither moves."""
    device = live(backend, OP, device_type)
    hm = gaussian(4, 4, 2.3, 1.8)[None, None]
    torch.testing.assert_close(decode(hm, "dark", backend, device)[0, 0, :2], torch.tensor([2.0, 2.0]), rtol=0,
                               atol=1e-6)
    torch.testing.assert_close(decode(hm, "classic", backend, device)[0, 0, :2], torch.tensor([2.25, 1.75]), rtol=0,
                               atol=1e-6)
    for h, w in ((1, 1), (2, 3)):
        small = gaussian(h, w, w - 1.0, 0.2)[None, None]
        for method in METHODS:
            torch.testing.assert_close(decode(small, method, backend, device)[0, 0, :2],
                                       torch.tensor([w - 1.0, 0.0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shift", (False, True), ids=("no_shift", "shift"))
@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_flip_merge(backend, device_type, shift):
    """Joint 0's flipped map comes from the flipped crops' joint 1 (flip_index [1, 0, 2]): a spike of 1 at column
    c of flipped joint 1 lands on column w - 1 - c (w - c shifted); the merge halves it. Joint 2 maps to itself."""
    device = live(backend, OP, device_type)
    h, w = 9, 11
    hm = torch.zeros(1, 3, h, w)
    flipped = torch.zeros(1, 3, h, w)
    flipped[0, 1, 4, 2] = 1.0
    flipped[0, 2, 6, 7] = 0.8
    hm[0, 2, 6, 3 + shift] = 0.2  # where joint 2's flipped spike lands: the merge adds them
    out = decode(hm, "classic", backend, device, flipped=flipped, flip_index=[1, 0, 2], shift_flipped=shift)
    torch.testing.assert_close(out[0, 0], torch.tensor([w - 1 - 2 + shift, 4.0, 0.5]), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0, 2], torch.tensor([3.0 + shift, 6.0, 0.5]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_shift_keeps_column_zero(backend, device_type):
    """With shift_flipped, column 0 of the merged flipped map keeps its own value (flipped back: the flipped crop's
    last column); column 1 also gets that value (the shift), so the first maximum is column 0."""
    device = live(backend, OP, device_type)
    flipped = torch.zeros(1, 1, 5, 6)
    flipped[0, 0, 2, 5] = 1.0
    out = decode(torch.zeros(1, 1, 5, 6), "classic", backend, device, flipped=flipped, flip_index=[0],
                 shift_flipped=True)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 2.0, 0.5]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_nan_decodes_to_nan(backend, device_type):
    device = live(backend, OP, device_type)
    hm = gaussian(8, 8, 3.0, 4.0)[None, None].repeat(1, 2, 1, 1)
    hm[0, 1, 5, 5] = float("nan")
    out = decode(hm, "dark", backend, device)
    assert torch.isnan(out[0, 1]).all() and not torch.isnan(out[0, 0]).any()


# --------------------------------------------------------------------------------------------- DARK's clamp

CLAMP_CASES = {
    # Values ~1e-12: every blurred value is below the floor, L is constant, DARK leaves the argmax alone.
    "tiny map": (lambda: gaussian(16, 14, 6.3, 7.6) * 1e-12, 11),
    # A lone spike of 1e-9 on zeros: blurred values at the stencil fall below 2e-10 (the kernels then compute
    # the whole blurred map for its max), yet the rescale by max(m) / max(B) ~ 25 lifts them over the floor.
    "lone spike": (lambda: torch.zeros(16, 14).index_put_((torch.tensor([7]), torch.tensor([6])),
                                                             torch.tensor([1e-9])), 11),
    # A peak surrounded by negative values: the blur is negative near the peak, clamped there.
    "negative surround": (lambda: gaussian(16, 14, 6.4, 7.3) - 1.5 * gaussian(16, 14, 6.4, 9.3, 1.0), 5),
    # blur_kernel 3 on a sharp peak: the stencil's +-2 points see almost nothing of it.
    "sharp peak, small blur": (lambda: gaussian(16, 14, 6.2, 7.7, 0.5) * 1e-8, 3),
}


@pytest.mark.parametrize("name", CLAMP_CASES)
@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_dark_where_the_clamp_matters(backend, device_type, name):
    make, blur_kernel = CLAMP_CASES[name]
    device = live(backend, OP, device_type)
    hm = make()[None, None]
    centers, scales = identity_boxes(1, *hm.shape[2:])
    out = check(hm, centers, scales, "dark", backend, device, blur_kernel=blur_kernel)
    if name == "tiny map":  # constant L: no step at all
        torch.testing.assert_close(out[0, 0, :2], torch.tensor([6.0, 8.0]), rtol=0, atol=1e-6)


def test_clamp_cases_exercise_the_clamp_and_the_slow_path():
    """The cases above are what they claim: the clamp acts in all but the lone spike, whose stencil values are below
    2e-10 before the rescale (so the kernels cannot take L = log B there)."""
    for name, (make, blur_kernel) in CLAMP_CASES.items():
        hm = make()[None, None]
        score = hm.flatten(2).amax(-1)
        L = _blurred_log(hm, score, blur_kernel)
        py, px = divmod(int(hm.flatten().argmax()), hm.shape[3])
        stencil = L[0, 0, py - 2:py + 3, px - 2:px + 3]
        clamped = bool((stencil <= torch.log(torch.tensor(1e-10)) + 1e-5).any())
        assert clamped == (name != "lone spike"), name


# ------------------------------------------------------------------------------------ against the reference

def random_maps(k: int, j: int, h: int, w: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "blobs":
        x = torch.rand(k, j, generator=gen) * w
        y = torch.rand(k, j, generator=gen) * h
        sigma = 0.7 + 2 * torch.rand(k, j, generator=gen)
        maps = torch.stack([torch.stack([gaussian(h, w, x[a, b].item(), y[a, b].item(), sigma[a, b].item())
                                         for b in range(j)]) for a in range(k)]) if k * j else torch.zeros(k, j, h, w)
        return maps + 0.02 * torch.randn(k, j, h, w, generator=gen)
    if kind == "noise":
        return torch.randn(k, j, h, w, generator=gen)
    if kind == "ties":  # few distinct values: many equal maxima and equal neighbours
        return torch.randint(0, 3, (k, j, h, w), generator=gen).float() / 2
    return torch.full((k, j, h, w), 0.25)  # constant


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_matches_reference(backend, device_type, method, dtype):
    """Pose-sized maps (64x48; not interpreted: seconds per map there), odd 17x13, with and without the flip merge
    and shift, several boxes."""
    device = live(backend, OP, device_type)
    gen = torch.Generator().manual_seed(7)
    interpreted = backend == "triton" and device.type == "cpu"
    for (k, j, h, w), flip, shift in (((2, 3, 64, 48), False, False), ((3, 2, 17, 13), True, True),
                                      ((1, 4, 17, 13), True, False))[interpreted:]:
        hm = random_maps(k, j, h, w, "blobs", gen).to(dtype)
        flipped = random_maps(k, j, h, w, "blobs", gen).to(dtype) if flip else None
        index = list(range(j))[::-1] if flip else None
        centers = torch.rand(k, 2, generator=gen) * 300
        scales = 50 + torch.rand(k, 2, generator=gen) * 200
        check(hm, centers, scales, method, backend, device, flipped, index, shift)


@pytest.mark.parametrize("blur_kernel", (1, 3, 7, 17))
@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_dark_blur_sizes(backend, device_type, blur_kernel):
    device = live(backend, OP, device_type)
    gen = torch.Generator().manual_seed(blur_kernel)
    hm = random_maps(2, 3, 15, 12, "blobs", gen)
    centers, scales = identity_boxes(2, 15, 12)
    check(hm, centers, scales, "dark", backend, device, blur_kernel=blur_kernel)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_non_contiguous_inputs(backend, device_type):
    """Transposed heatmaps and flipped maps, strided centers and scales, a flip_index given as a list."""
    device = live(backend, OP, device_type)
    gen = torch.Generator().manual_seed(8)
    hm = random_maps(2, 3, 12, 14, "blobs", gen).transpose(2, 3)
    flipped = random_maps(2, 3, 14, 12, "blobs", gen)[:, [2, 1, 0]]
    both = torch.rand(2, 4, generator=gen) * 100
    centers, scales = both[:, ::2], 20 + both[:, 1::2]
    assert not hm.is_contiguous() and not centers.is_contiguous()
    for method in METHODS:
        check(hm, centers, scales, method, backend, device, flipped, [2, 1, 0], True)


@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_empty_batches(backend, device_type):
    device = live(backend, OP, device_type)
    for k, j in ((0, 17), (3, 0)):
        centers, scales = identity_boxes(k, 8, 6)
        flip = torch.zeros(k, j, 8, 6)
        out = decode(torch.zeros(k, j, 8, 6), "dark", backend, device, centers, scales, flipped=flip,
                     flip_index=list(range(j)))
        assert out.shape == (k, j, 3)


@st.composite
def decode_cases(draw):
    k, j = draw(st.integers(0, 3)), draw(st.integers(1, 4))
    flip = draw(st.booleans())
    return dict(k=k, j=j, h=draw(st.integers(1, 20)), w=draw(st.integers(1, 20)),
                kind=draw(st.sampled_from(("blobs", "blobs", "noise", "ties", "constant"))),
                dtype=draw(st.sampled_from(DTYPES)), method=draw(st.sampled_from(METHODS)), flip=flip,
                shift=draw(st.booleans()), index=draw(st.permutations(range(j))) if flip else None,
                blur_kernel=draw(st.sampled_from((1, 3, 5, 11))), scale=draw(st.sampled_from((1.0, 1e-9, 30.0))),
                seed=draw(st.integers(0, 2 ** 31 - 1)))


def involution(perm):
    """A flip_index from a permutation: pairs (perm[0], perm[1]), (perm[2], perm[3]), ... swapped."""
    index = list(range(len(perm)))
    for a, b in zip(perm[0::2], perm[1::2]):
        index[a], index[b] = b, a
    return index


@pytest.mark.parametrize("backend, device_type", FUZZ_TARGETS)
def test_fuzz(backend, device_type):
    device = live(backend, OP, device_type)

    @fuzz_settings(backend == "triton" and device.type == "cpu")
    @given(case=decode_cases())
    def property_holds(case):
        gen = torch.Generator().manual_seed(case["seed"])
        k, j, h, w = case["k"], case["j"], case["h"], case["w"]
        hm = (random_maps(k, j, h, w, case["kind"], gen) * case["scale"]).to(case["dtype"])
        flipped = (random_maps(k, j, h, w, case["kind"], gen) * case["scale"]).to(case["dtype"]) \
            if case["flip"] else None
        centers = torch.randn(k, 2, generator=gen) * 100
        scales = torch.rand(k, 2, generator=gen) * 300
        check(hm, centers, scales, case["method"], backend, device, flipped,
              involution(case["index"]) if case["flip"] else None, case["shift"], case["blur_kernel"])

    property_holds()


# ------------------------------------------------------------------------------------------------ bad input

def _maps(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


BAD = {
    "heatmaps 3-D": (dict(heatmaps=_maps(2, 8, 6)), r"heatmaps must be a 4-D \[K, J, h, w\]"),
    "heatmaps int": (dict(heatmaps=_maps(2, 3, 8, 6, dtype=torch.int32)), r"heatmaps must be float32, float16"),
    "heatmaps empty": (dict(heatmaps=_maps(2, 3, 0, 6)), r"heatmaps have an empty spatial size 0x6"),
    "heatmaps not a tensor": (dict(heatmaps=[[0.0]]), r"heatmaps must be a torch\.Tensor"),
    "centers of another K": (dict(centers=torch.zeros(3, 2)), r"centers must have shape \(2, 2\)"),
    "scales [K]": (dict(scales=torch.ones(2)), r"scales must have shape \(2, 2\)"),
    "centers float64": (dict(centers=torch.zeros(2, 2, dtype=torch.float64)), r"centers must be float32"),
    "centers NaN": (dict(centers=torch.tensor([[0.0, float("nan")], [0, 0]])), r"centers holds NaN or infinite"),
    "scales inf": (dict(scales=torch.tensor([[1.0, 1], [float("inf"), 1]])), r"scales holds NaN or infinite"),
    "scales on another device": (dict(scales=torch.ones(2, 2, device="meta")), r"scales is on meta but heatmaps"),
    "method": (dict(method="argmax"), r"method must be one of 'classic', 'dark', got 'argmax'"),
    "blur_kernel even": (dict(blur_kernel=10), r"blur_kernel must be an odd size from 1 to 255, got 10"),
    "blur_kernel huge": (dict(blur_kernel=257), r"blur_kernel must be an odd size from 1 to 255"),
    "blur_kernel zero": (dict(blur_kernel=0), r"blur_kernel must be a positive int"),
    "shift not bool": (dict(shift_flipped="yes"), r"shift_flipped must be a bool"),
    "flipped of another shape": (dict(flipped=_maps(2, 3, 8, 5), flip_index=[0, 1, 2]), r"flipped must match"),
    "flipped of another dtype": (dict(flipped=_maps(2, 3, 8, 6, dtype=torch.float16), flip_index=[0, 1, 2]),
                                 r"flipped must match heatmaps"),
    "flipped without flip_index": (dict(flipped=_maps(2, 3, 8, 6)), r"flip_index is required with flipped"),
    "flip_index without flipped": (dict(flip_index=[0, 1, 2]), r"flip_index was given without flipped"),
    "flip_index too short": (dict(flipped=_maps(2, 3, 8, 6), flip_index=[1, 0]),
                             r"flip_index must have one entry per joint \(3\)"),
    "flip_index out of range": (dict(flipped=_maps(2, 3, 8, 6), flip_index=[0, 1, 3]),
                                r"flip_index entries must lie in 0\.\.2"),
    "flip_index negative": (dict(flipped=_maps(2, 3, 8, 6), flip_index=[0, -1, 2]),
                            r"flip_index entries must lie in 0\.\.2"),
    "flip_index not an involution": (dict(flipped=_maps(2, 3, 8, 6), flip_index=[1, 2, 0]),
                                     r"flip_index must be its own inverse"),
    "flip_index floats": (dict(flipped=_maps(2, 3, 8, 6), flip_index=[0.0, 1.0, 2.0]),
                          r"flip_index must hold integers"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_raises_before_any_kernel(monkeypatch, name):
    changes, pattern = BAD[name]
    args = dict(heatmaps=_maps(2, 3, 8, 6), centers=torch.zeros(2, 2), scales=torch.ones(2, 2), method="dark")
    args.update(changes)
    fail_if_a_kernel_runs(monkeypatch)
    with pytest.raises(ValueError, match=pattern):
        heatmap_decode(**args)


def test_heatmaps_requiring_grad_are_refused():
    with pytest.raises(RuntimeError, match="heatmap_decode is inference-only"):
        heatmap_decode(_maps(1, 1, 4, 4).requires_grad_(), torch.zeros(1, 2), torch.ones(1, 2), backend="torch")


@pytest.mark.parametrize("backend", ("cpu", "cuda"))
def test_native_op_checks_its_boundary(backend):
    """torch.ops.hrnet_fast_C.heatmap_decode called directly refuses what its raw-pointer kernels cannot take."""
    live(backend, OP, backend)
    native = torch.ops.hrnet_fast_C.heatmap_decode
    hm, pairs = _maps(2, 3, 8, 6).to(backend), torch.zeros(2, 2, device=backend)
    with pytest.raises(RuntimeError, match=r"flip_index must be an int64 \[J\]"):
        native(hm, pairs, pairs, "dark", hm, torch.zeros(2, dtype=torch.long, device=backend), False, 11)
    with pytest.raises(RuntimeError, match=r"centers must be \[K, 2\]"):
        native(hm, pairs[:1], pairs, "dark", None, None, False, 11)
    if backend == "cpu":
        with pytest.raises(RuntimeError, match=r"flip_index entries must lie in 0\.\.2"):
            native(hm, pairs, pairs, "classic", hm, torch.tensor([0, 1, 5]), False, 11)


# ------------------------------------------------------------------------------------------- registration

@pytest.mark.parametrize("flip", (False, True), ids=("plain", "flip"))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend, device_type", TARGETS)
def test_opcheck(backend, device_type, method, flip):
    device = live(backend, OP, device_type)
    gen = torch.Generator().manual_seed(9)
    hm = random_maps(2, 2, 7, 6, "blobs", gen).to(device)
    centers, scales = (t.to(device) for t in identity_boxes(2, 7, 6))
    flipped = hm.flip(-1) if flip else None
    index = torch.tensor([1, 0], device=device) if flip else None
    torch.library.opcheck(torch.ops.hrnet_fast.heatmap_decode.default,
                          (hm, centers, scales, method, flipped, index, True, 5, backend))


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
