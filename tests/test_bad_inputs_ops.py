"""Bad input to the fused ops ``conv_bn_act`` and ``multires_fuse``. One test per case; each asserts the exception
type and that the message names the problem.
"""
from __future__ import annotations

import pytest
import torch

import hrnet_fast.ops as ops


def _t(*shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, device=device)


# name: (x, weight, bias, residual, stride, padding, backend), error, pattern
CONV_CASES = {
    "integer dtype": (lambda: (_t(1, 8, 6, 6, dtype=torch.int32), _t(4, 8, 3, 3, dtype=torch.int32), None, None,
                               1, 1, None), TypeError, r"x has dtype torch\.int32; supported dtypes are"),
    "float64": (lambda: (_t(1, 8, 6, 6, dtype=torch.float64), _t(4, 8, 3, 3, dtype=torch.float64), None, None,
                         1, 1, None), TypeError, r"x has dtype torch\.float64; supported dtypes are"),
    "weight on another device": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3, device="meta"), None, None, 1, 1, None),
                                 ValueError, r"weight is on meta but x is on cpu; all inputs must be on one device"),
    "bias on another device": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3), _t(4, device="meta"), None, 1, 1, None),
                               ValueError, r"bias is on meta but x is on cpu"),
    "residual on another device": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3), None, _t(1, 4, 6, 6, device="meta"),
                                            1, 1, None), ValueError, r"residual is on meta but x is on cpu"),
    "empty spatial size": (lambda: (_t(1, 8, 0, 6), _t(4, 8, 3, 3), None, None, 1, 1, None), ValueError,
                           r"input of spatial size \(0, 6\) is too small for a 3x3 kernel"),
    "mismatched channels": (lambda: (_t(1, 8, 6, 6), _t(4, 9, 3, 3), None, None, 1, 1, None), ValueError,
                            r"x has 8 channels but weight expects 9"),
    "mismatched residual": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3), None, _t(1, 4, 6, 6), 2, 1, None), ValueError,
                            r"residual has shape \(1, 4, 6, 6\) but the conv output is \(1, 4, 3, 3\)"),
    "bias of another length": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3), _t(8), None, 1, 1, None), ValueError,
                               r"bias must have shape \(4,\), got \(8,\)"),
    "x not a tensor": (lambda: ([[0.0]], _t(4, 8, 3, 3), None, None, 1, 1, None), TypeError,
                       r"x must be a torch\.Tensor, got list"),
    "unknown backend": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3), None, None, 1, 1, "opencl"), ValueError,
                        r"unknown backend 'opencl'"),
    "backend for another device": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3), None, None, 1, 1, "cuda"),
                                   RuntimeError, r"backend 'cuda' cannot run conv_bn_act on cpu"),
    "x requires grad": (lambda: (_t(1, 8, 6, 6).requires_grad_(), _t(4, 8, 3, 3), None, None, 1, 1, None),
                        RuntimeError, r"conv_bn_act is inference-only and has no backward, but an input requires"),
    "weight requires grad, torch backend": (
        lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3).requires_grad_(), None, None, 1, 1, "torch"), RuntimeError,
        r"conv_bn_act is inference-only .* torch\.no_grad\(\) or torch\.inference_mode\(\)"),
}


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_bn_act_rejects(name):
    make, error, pattern = CONV_CASES[name]
    x, weight, bias, residual, stride, padding, backend = make()
    with pytest.raises(error, match=pattern):
        ops.conv_bn_act(x, weight, bias, stride=stride, padding=padding, residual=residual, backend=backend)


# name: (x, low_res, same_res, backend), error, pattern
FUSE_CASES = {
    "integer dtype": (lambda: (_t(1, 4, 8, 8, dtype=torch.int32), [], [], None), TypeError,
                      r"x has dtype torch\.int32; supported dtypes are"),
    "integer same_res": (lambda: (_t(1, 4, 8, 8), [], [_t(1, 4, 8, 8, dtype=torch.uint8)], None), TypeError,
                         r"same_res\[0\] has dtype torch\.uint8; supported dtypes are"),
    "float64": (lambda: (_t(1, 4, 8, 8, dtype=torch.float64), [_t(1, 4, 4, 4, dtype=torch.float64)], [], None),
                TypeError, r"x has dtype torch\.float64; supported dtypes are"),
    "low_res on another device": (lambda: (_t(1, 4, 8, 8), [_t(1, 4, 4, 4, device="meta")], [], None), ValueError,
                                  r"low_res\[0\] is on meta but x is on cpu; all inputs must be on one device"),
    "same_res on another device": (lambda: (_t(1, 4, 8, 8), [], [_t(1, 4, 8, 8, device="meta")], None),
                                   ValueError, r"same_res\[0\] is on meta but x is on cpu"),
    "empty spatial size": (lambda: (_t(1, 4, 8, 0), [], [], None), ValueError,
                           r"x has an empty spatial size \(8, 0\)"),
    "empty low_res": (lambda: (_t(1, 4, 8, 8), [_t(1, 4, 0, 4)], [], None), ValueError,
                      r"low_res\[0\] is 0x4 and x is 8x8: low_res inputs must be smaller than x by one power-of-two"),
    "mismatched same_res": (lambda: (_t(1, 4, 8, 8), [], [_t(1, 4, 8, 9)], None), ValueError,
                            r"same_res\[0\] has shape \(1, 4, 8, 9\) but x has \(1, 4, 8, 8\)"),
    "mismatched low_res channels": (lambda: (_t(1, 4, 8, 8), [_t(1, 5, 4, 4)], [], None), ValueError,
                                    r"low_res\[0\] has shape \(1, 5, 4, 4\); batch and channels must match x"),
    "low_res factor not a power of two": (lambda: (_t(1, 4, 12, 12), [_t(1, 4, 4, 4)], [], None), ValueError,
                                          r"low_res\[0\] is 4x4 and x is 12x12: .*power-of-two factor"),
    "low_res not a tensor": (lambda: (_t(1, 4, 8, 8), [3.0], [], None), TypeError,
                             r"low_res\[0\] must be a torch\.Tensor, got float"),
    "unknown backend": (lambda: (_t(1, 4, 8, 8), [], [], "opencl"), ValueError, r"unknown backend 'opencl'"),
    "backend for another device": (lambda: (_t(1, 4, 8, 8), [], [], "cuda"), RuntimeError,
                                   r"backend 'cuda' cannot run multires_fuse on cpu"),
    "low_res requires grad": (lambda: (_t(1, 4, 8, 8), [_t(1, 4, 4, 4).requires_grad_()], [], None), RuntimeError,
                              r"multires_fuse is inference-only and has no backward, but an input requires grad"),
    "x requires grad, torch backend": (lambda: (_t(1, 4, 8, 8).requires_grad_(), [], [], "torch"), RuntimeError,
                                       r"multires_fuse is inference-only and has no backward"),
}


@pytest.mark.parametrize("name", FUSE_CASES)
def test_multires_fuse_rejects(name):
    make, error, pattern = FUSE_CASES[name]
    x, low, same, backend = make()
    with pytest.raises(error, match=pattern):
        ops.multires_fuse(x, low, same, backend=backend)
