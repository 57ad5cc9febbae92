"""What the pose op tests (tests/test_crop_normalize.py, tests/test_heatmap_decode.py) share: the backends they
run on, the tolerance rule applied element by element, and a guard that no kernel runs before validation fails.

Tolerance rule (DESIGN.md, Numerics), per element: the truth is the reference in float64; an op's result may be off
from it by at most twice the error of the reference itself in the op's compute precision (fp32, then cast to the
output dtype), plus a floor relative to the truth's scale (fp32 1e-5, fp16 1e-3, bf16 1e-2). Per element rather
than over the whole tensor, so one ill-conditioned joint or pixel cannot widen the bound for all the others.
"""
from __future__ import annotations

import pytest
import torch

from hrnet_fast.ops import pose_library
from tolerance import FLOOR

# (backend, device type); triton on CPU tensors runs through the interpreter (tests/conftest.py).
TARGETS = (
    pytest.param("torch", "cpu", id="torch"),
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("triton", "cpu", id="triton-interpreted"),
    pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.gpu),
    pytest.param("triton", "cuda", id="triton-gpu", marks=pytest.mark.gpu),
)

FUZZ_TARGETS = TARGETS[1:]  # the reference against itself proves nothing


def live(backend: str, op: str, device_type: str) -> torch.device:
    """The device to test ``backend`` on; skips with the dispatcher's reason when it is not live there."""
    from hrnet_fast.ops.backends import availability
    ok, why = availability(backend, op, device_type)
    if not ok:
        pytest.skip(f"backend {backend!r} is not live for {op} on {device_type}: {why}")
    return torch.device(device_type)


def assert_within_rule(actual: torch.Tensor, truth: torch.Tensor, eager: torch.Tensor) -> None:
    """Element-wise tolerance rule; NaN must appear exactly where the truth has NaN."""
    assert actual.shape == truth.shape, f"shape {tuple(actual.shape)}, expected {tuple(truth.shape)}"
    a, t, e = actual.detach().cpu().double(), truth.detach().cpu().double(), eager.detach().cpu().double()
    nan = torch.isnan(t)
    assert torch.equal(torch.isnan(a), nan), "NaN where the truth has none, or a number where it has NaN"
    a, t, e = a[~nan], t[~nan], e[~nan]
    if t.numel() == 0:
        return
    floor = FLOOR[actual.dtype] * max(t.abs().max().item(), 1.0)
    bound = 2 * (e - t).abs() + floor
    err = (a - t).abs()
    worst = (err - bound).argmax()
    assert bool((err <= bound).all()), (f"error {err[worst].item():.3g} > allowed {bound[worst].item():.3g} at flat "
                                        f"index {worst.item()} (value {a[worst].item()}, truth {t[worst].item()})")


def fail_if_a_kernel_runs(monkeypatch) -> None:
    """Makes reaching any pose op backend an assertion error: for tests that expect validation to fail first."""
    def no_kernel(op, backend):
        raise AssertionError(f"a {backend} kernel for {op} was reached before the inputs were validated")
    monkeypatch.setattr(pose_library, "implementation", no_kernel)
