"""bfloat16 on CPU: a converted model's accuracy and its agreement with float32, on a tiny HRNet
trained here on a synthetic task (tiny_hrnet.py), on this CPU's path and on those of CPUs with and without
native bfloat16 (cpu_paths.take_path).

Margins (stated, not tuned per run): the bfloat16 converted model's top-1 accuracy is within 1 percentage
point of the float32 model's and agrees with its top-1 on at least 99 % of 2,000 held-out images; its logits'
error against the float64 model is at most twice eager PyTorch's own error in that dtype plus the floor
(DESIGN.md, Numerics). Measured on an AMD EPYC (seeds as below): float32 84.85 %, converted bfloat16 84.80 %,
agreement 99.95 %, relative logit error 3.8e-3 (eager bfloat16: 5.4e-3).
"""
from __future__ import annotations

import copy

import pytest
import torch

import hrnet_fast
from cpu_paths import PATHS, take_path
from tiny_hrnet import synthetic_batch, trained_tiny_hrnet
from tolerance import FLOOR

TRAIN_STEPS = 300
HELD_OUT = 2000


@pytest.fixture(scope="module")
def trained():
    model = trained_tiny_hrnet(TRAIN_STEPS)
    images, labels = synthetic_batch(HELD_OUT, torch.Generator().manual_seed(1234))
    with torch.no_grad():
        truth = model.double()(images.double())
        model.float()
        fp32 = model(images)
    return model, images, labels, truth, fp32


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def relative_error(logits: torch.Tensor, truth: torch.Tensor) -> float:
    return ((logits.double() - truth).norm() / truth.norm()).item()


def test_the_task_is_learned_but_not_trivial(trained):
    _, _, labels, truth, fp32 = trained
    assert 0.7 <= accuracy(fp32, labels) <= 0.97  # chance is 0.25; below 1.0, so accuracy can move either way
    assert accuracy(truth, labels) == pytest.approx(accuracy(fp32, labels), abs=1e-3)


@pytest.mark.parametrize("path", PATHS)
def test_converted_bfloat16_keeps_accuracy(monkeypatch, trained, path):
    model, images, labels, truth, fp32 = trained
    dtype = torch.bfloat16
    take_path(monkeypatch, path)
    fast = hrnet_fast.convert(model, dtype=dtype)
    with torch.no_grad():
        out = fast(images.to(dtype)).float()
        eager = copy.deepcopy(model).to(dtype)(images.to(dtype)).float()  # plain PyTorch in that dtype
    assert accuracy(out, labels) >= accuracy(fp32, labels) - 0.01
    assert (out.argmax(1) == fp32.argmax(1)).float().mean().item() >= 0.99
    assert relative_error(out, truth) <= 2 * relative_error(eager, truth) + FLOOR[dtype]


def test_converted_float32_matches(trained):
    model, images, labels, truth, fp32 = trained
    with torch.no_grad():
        out = hrnet_fast.convert(model)(images)
    assert (out.argmax(1) == fp32.argmax(1)).float().mean().item() >= 0.999
    assert relative_error(out, truth) <= 2 * relative_error(fp32, truth) + FLOOR[torch.float32]
