"""hrnet_fast.warmup: one first call per shape, timed; shapes checked; later calls unchanged."""
from __future__ import annotations

import pytest
import torch

import hrnet_fast


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    return hrnet_fast.convert(hrnet_fast.create_model("hrnet_w18_small").eval())


def test_warmup_runs_each_shape(converted):
    seconds = hrnet_fast.warmup(converted, [(1, 3, 64, 64), (2, 64, 96)])
    assert list(seconds) == [(1, 3, 64, 64), (2, 3, 64, 96)] and all(s > 0 for s in seconds.values())
    x = torch.randn(2, 3, 64, 96)
    torch.testing.assert_close(converted(x), converted(x), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(1, 64, 64, 3, 1), (0, 3, 64, 64), (64, 64)])
def test_warmup_rejects_bad_shapes(converted, shape):
    with pytest.raises(ValueError, match="warmup shapes"):
        hrnet_fast.warmup(converted, [shape])


def test_warmup_input_errors_come_from_the_model(converted):
    """The converted model's own input checks apply (here: an input size HRNet cannot take)."""
    with pytest.raises(ValueError):
        hrnet_fast.warmup(converted, [(1, 3, 70, 70)])
