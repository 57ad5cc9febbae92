"""``conv_bn_act`` and ``multires_fuse`` on NaN, Inf, fp16 overflow and denormal values, on every live backend
(the targets of tests/fuzz_harness.py): non-finite values propagate where the float64 reference has them, fp16
saturates to +-inf exactly where PyTorch's fp16 result does, a fused kernel's fp32 epilogue does not overflow
where eager fp16 would, and fp32 denormals come out bit-exact (no flush to zero).
"""
from __future__ import annotations

from typing import Callable, Sequence

import pytest
import torch

import hrnet_fast.ops as ops
from fuzz_harness import TARGETS, live_device
from hrnet_fast.ops.reference import conv_bn_act_ref, multires_fuse_ref
from tolerance import assert_matches_reference, cast


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
