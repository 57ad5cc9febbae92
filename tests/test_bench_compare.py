"""The benchmark's agreement check takes any output structure: tensors, NumPy arrays, lists and dicts."""
import numpy as np
import pytest
import torch

from hrnet_fast.bench.compare import flatten_outputs, relative_error


def test_flatten_keeps_order_and_converts_arrays():
    a, b, c = torch.ones(2), torch.zeros(3), np.full((1, 2), 5.0, dtype=np.float32)
    leaves = flatten_outputs({"x": [a, (b,)], "y": c})
    assert [t.shape for t in leaves] == [(2,), (3,), (1, 2)]
    assert torch.equal(leaves[2], torch.full((1, 2), 5.0))
    c[0, 0] = 7.0  # the flattened leaf is a copy: a runtime reusing its output buffer cannot change it
    assert leaves[2][0, 0] == 5.0


def test_relative_error_is_the_worst_leaf():
    ref = [torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0])]
    out = [torch.tensor([3.0, 4.5]), np.array([1.0, 0.1], dtype=np.float32)]
    # Leaf 0: |(0, 0.5)| / 5 = 0.1; leaf 1: |(0, 0.1)| / 1 = 0.1 (float32 rounding), the larger is reported.
    assert relative_error(out, ref) == pytest.approx(0.1, rel=1e-6)
    assert relative_error(torch.tensor([2.0]), torch.tensor([1.0])) == pytest.approx(1.0)


@pytest.mark.parametrize("out,ref,message", [
    ([torch.ones(2)], [torch.ones(2), torch.ones(2)], "1 tensors against the reference's 2"),
    (torch.ones(2, 3), torch.ones(3, 2), r"output 0 has shape \(2, 3\), the reference's \(3, 2\)"),
])
def test_mismatched_outputs_are_named(out, ref, message):
    with pytest.raises(ValueError, match=message):
        relative_error(out, ref)


def test_unknown_output_type_is_refused():
    with pytest.raises(TypeError, match="output of type str"):
        flatten_outputs("logits")
