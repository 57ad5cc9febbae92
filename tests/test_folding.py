"""fold_bn / fold_bn_weights: conv2d with the folded weights equals bn(conv(x)) in eval mode, checked in float64;
the fold itself runs in fp32 whatever the parameters' dtype; modules that cannot be folded give clear errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hrnet_fast.ops as ops
from hrnet_fast.ops import fold_bn, fold_bn_weights


def conv_bn(cin: int, cout: int, k: int, *, conv_bias: bool, affine: bool, eps: float = 1e-5,
            dtype: torch.dtype = torch.float64) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A conv and a BN with non-trivial statistics and affine parameters, as after training."""
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=conv_bias).to(dtype)
    bn = nn.BatchNorm2d(cout, eps=eps, affine=affine).to(dtype)
    with torch.no_grad():
        bn.running_mean.uniform_(-2.0, 2.0)
        bn.running_var.uniform_(0.05, 4.0)
        if affine:
            bn.weight.uniform_(-1.5, 1.5)
            bn.bias.uniform_(-1.0, 1.0)
    return conv.eval(), bn.eval()


def folded_output(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), stride=conv.stride, padding=conv.padding)


@pytest.mark.parametrize("k", (1, 3))
@pytest.mark.parametrize("affine", (True, False), ids=("affine", "no-affine"))
@pytest.mark.parametrize("conv_bias", (True, False), ids=("conv-bias", "no-conv-bias"))
def test_fold_matches_conv_then_bn(conv_bias, affine, k):
    """Float64 modules as the truth; the fold's only error is rounding w', b' to fp32."""
    torch.manual_seed(0)
    conv, bn = conv_bn(18, 36, k, conv_bias=conv_bias, affine=affine, eps=1e-3)
    x = torch.randn(2, 18, 9, 11, dtype=torch.float64)
    weight, bias = fold_bn(conv, bn)
    assert weight.dtype == bias.dtype == torch.float32
    assert weight.shape == conv.weight.shape and bias.shape == (36,)
    with torch.no_grad():
        expected = bn(conv(x))
    torch.testing.assert_close(folded_output(x, conv, weight, bias), expected, rtol=1e-5, atol=1e-5)


def test_fold_math_in_float64():
    """The formula itself, element by element: w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta."""
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    b, mean, gamma, beta = (torch.randn(4, dtype=torch.float64) for _ in range(4))
    var = torch.rand(4, dtype=torch.float64) + 0.1
    eps = 1e-5
    weight, bias = fold_bn_weights(w, b, mean, var, eps, gamma, beta)
    for o in range(4):
        s = gamma[o].item() / (var[o].item() + eps) ** 0.5
        torch.testing.assert_close(weight[o].double(), w[o] * s, rtol=1e-6, atol=1e-7)
        assert bias[o].item() == pytest.approx((b[o].item() - mean[o].item()) * s + beta[o].item(), rel=1e-6, abs=1e-6)


def test_fold_bn_weights_without_bias_or_affine():
    """No conv bias means b = 0; no affine means gamma = 1, beta = 0."""
    w = torch.ones(2, 1, 1, 1)
    mean, var = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    weight, bias = fold_bn_weights(w, None, mean, var, eps=1.0)
    torch.testing.assert_close(weight.flatten(), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(bias, torch.tensor([-0.5, 2.0]))


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_fold_runs_in_fp32_for_half_parameters(dtype):
    """Half-precision modules fold in fp32: the result equals the fp32 fold of the same (half) values."""
    torch.manual_seed(0)
    conv, bn = conv_bn(18, 36, 3, conv_bias=True, affine=True, dtype=dtype)
    weight, bias = fold_bn(conv, bn)
    conv32, bn32 = conv_bn(18, 36, 3, conv_bias=True, affine=True, dtype=torch.float32)
    conv32.load_state_dict({k: v.float() for k, v in conv.state_dict().items()})
    bn32.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in bn.state_dict().items()})
    weight32, bias32 = fold_bn(conv32, bn32)
    assert weight.dtype == bias.dtype == torch.float32
    torch.testing.assert_close(weight, weight32, rtol=0, atol=0)
    torch.testing.assert_close(bias, bias32, rtol=0, atol=0)


def test_fold_uses_running_statistics_in_train_mode():
    """Folding is eval-mode semantics: a BN left in train mode still folds its running statistics."""
    torch.manual_seed(0)
    conv, bn = conv_bn(8, 8, 1, conv_bias=False, affine=True)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = bn(conv(x))
    weight, bias = fold_bn(conv, bn.train())
    torch.testing.assert_close(folded_output(x, conv, weight, bias), expected, rtol=1e-5, atol=1e-5)


def test_fold_leaves_the_modules_unchanged():
    conv, bn = conv_bn(8, 8, 3, conv_bias=True, affine=True)

    def state():
        return {f"{prefix}.{name}": t.clone() for prefix, module in (("conv", conv), ("bn", bn))
                for name, t in module.state_dict().items()}

    before = state()
    fold_bn(conv, bn)
    for name, value in state().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=f"{name} changed")


def test_folded_conv_through_conv_bn_act():
    """The folded weights fed to the fused op (reference backend) give relu(bn(conv(x)) + residual)."""
    torch.manual_seed(0)
    conv, bn = conv_bn(18, 18, 3, conv_bias=False, affine=True, dtype=torch.float32)
    x, residual = torch.randn(1, 18, 7, 7), torch.randn(1, 18, 7, 7)
    weight, bias = fold_bn(conv, bn)
    y = ops.conv_bn_act(x, weight, bias, padding=1, residual=residual, relu=True, backend="torch")
    with torch.no_grad():
        expected = torch.relu(bn(conv(x)) + residual)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_bn_without_running_statistics_is_an_error():
    conv = nn.Conv2d(8, 8, 3)
    bn = nn.BatchNorm2d(8, track_running_stats=False)
    with pytest.raises(ValueError, match="without running statistics"):
        fold_bn(conv, bn)


def test_channel_mismatch_is_an_error():
    with pytest.raises(ValueError, match="conv has 16 output channels but BatchNorm2d has 8"):
        fold_bn(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(8))


# -- every BatchNorm form ------------------------------------------------------------------------------------------

from bn_forms import FORMS  # noqa: E402

from hrnet_fast.ops.folding import bn_not_foldable, bn_scale_shift, is_batchnorm, is_foldable_bn  # noqa: E402


@pytest.mark.parametrize("form", FORMS)
def test_every_form_folds_to_its_own_eval_forward(form):
    """The form's own forward (float64, eval mode) is the truth: bn(x) = x * s + t, and the fold of conv -> bn."""
    torch.manual_seed(0)
    conv, bn = conv_bn(8, 12, 3, conv_bias=True, affine=True, eps=1e-3)
    module = FORMS[form](bn).double().eval()
    assert is_batchnorm(module) and is_foldable_bn(module) and bn_not_foldable(module) is None
    x = torch.randn(2, 12, 5, 7, dtype=torch.float64)
    scale, shift = bn_scale_shift(module)
    assert scale.dtype == shift.dtype == torch.float32 and scale.shape == shift.shape == (12,)
    with torch.no_grad():
        expected = module(x)
    torch.testing.assert_close(x * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1), expected,
                               rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    weight, bias = fold_bn(conv, module)
    with torch.no_grad():
        expected = module(conv(x))
    torch.testing.assert_close(folded_output(x, conv, weight, bias), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", [f for f in FORMS if f != "FrozenBatchNorm2d"])
def test_a_bn_that_uses_batch_statistics_is_not_foldable(form):
    """In train mode, or without running statistics, a BN normalises with each batch's statistics."""
    _, bn = conv_bn(8, 8, 1, conv_bias=False, affine=True)
    training = FORMS[form](bn).train()
    assert is_batchnorm(training) and not is_foldable_bn(training)
    assert "train mode" in bn_not_foldable(training) and type(training).__name__ in bn_not_foldable(training)
    stateless = FORMS[form](nn.BatchNorm2d(8, track_running_stats=False)).eval()
    assert not is_foldable_bn(stateless) and "track_running_stats=False" in bn_not_foldable(stateless)
    with pytest.raises(ValueError, match="without running statistics"):
        bn_scale_shift(stateless)


def test_a_frozen_bn_is_foldable_in_train_mode_too():
    """FrozenBatchNorm2d's forward never uses batch statistics: the same in either mode."""
    _, bn = conv_bn(8, 8, 1, conv_bias=False, affine=True)
    frozen = FORMS["FrozenBatchNorm2d"](bn).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(frozen.train()(x), frozen.eval()(x), rtol=0, atol=0)
    assert is_foldable_bn(frozen.train())


class NotABatchNorm(nn.Module):
    """The frozen BN's buffers, but not its name: no structure alone says what its forward computes."""

    def __init__(self):
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, torch.ones(4))
        self.eps = 1e-5


@pytest.mark.parametrize("module", [nn.BatchNorm1d(4), nn.BatchNorm3d(4), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4),
                                    nn.LayerNorm(4), NotABatchNorm(), nn.Conv2d(4, 4, 1)], ids=lambda m: type(m).__name__)
def test_other_modules_are_not_batchnorms(module):
    assert not is_batchnorm(module) and not is_foldable_bn(module)
    with pytest.raises(ValueError, match="is not a BatchNorm"):
        bn_scale_shift(module)
