"""The fused ops: ``conv_bn_act`` and ``multires_fuse``, each with four backends behind one contract.

    from hrnet_fast import ops
    y = ops.conv_bn_act(x, w, b, stride=1, padding=1, residual=r, relu=True)   # relu(conv(x) + b + r)
    y = ops.multires_fuse(x, low_res=[z1, z2], same_res=[d])                   # relu(x + up(z1) + up(z2) + d)
    y = ops.multires_fuse(x, [z1, z2], mode="bilinear", align_corners=False)   # up = F.interpolate(bilinear)

``backend=None`` picks the fastest live backend for the tensors' device; ``backend_info()`` tells which are
live and why the others are not.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import cpu_conv, direct, library, onnx_translation  # noqa: F401  library registers torch.ops.hrnet_fast.*
from .backends import BACKENDS, backend_info, resolve
from .checks import check_conv_bn_act, check_multires_fuse
from .folding import fold_bn, fold_bn_weights
from .reference import conv_bn_act_ref, multires_fuse_ref

onnx_translation.register_when_exporter_loads()  # torch.onnx.export(..., dynamo=True) finds the ops' translations

__all__ = ["conv_bn_act", "multires_fuse", "fold_bn", "fold_bn_weights", "conv_bn_act_ref", "multires_fuse_ref",
           "backend_info", "BACKENDS"]


def conv_bn_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, stride: int = 1,
                padding: int = 0, residual: Optional[torch.Tensor] = None, relu: bool = True,
                backend: Optional[str] = None) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias, stride, padding) + residual)`` in one kernel.

    Args:
        x: [N, Cin, H, W], fp32/fp16/bf16, NCHW or channels_last.
        weight: [Cout, Cin, k, k], k in {1, 3}, BN already folded in (see ``fold_bn``), x's dtype.
        bias: [Cout] or None.
        residual: [N, Cout, Ho, Wo] or None, added before the ReLU.
        backend: "torch", "triton", "cuda", "cpu" or None (best live one for x's device).
    Returns:
        [N, Cout, Ho, Wo] in x's dtype and memory format.
    """
    check_conv_bn_act(x, weight, bias, stride, padding, residual)
    name = resolve("conv_bn_act", x.device.type, backend)
    if name == "cpu" and direct.plain_eager_call(x, weight, bias, residual):
        return cpu_conv.conv_bn_act(x, weight, bias, stride=int(stride), padding=int(padding), residual=residual,
                                    relu=bool(relu))
    return torch.ops.hrnet_fast.conv_bn_act(x, weight, bias, residual, int(stride), int(padding), bool(relu), name)


def multires_fuse(x: torch.Tensor, low_res: Sequence[torch.Tensor] = (), same_res: Sequence[torch.Tensor] = (), *,
                  relu: bool = True, mode: str = "nearest", align_corners: bool = False,
                  backend: Optional[str] = None) -> torch.Tensor:
    """``relu(x + sum_j up(low_res[j]) + sum_k same_res[k])`` in one pass, low-res inputs read in place (never
    upsampled into memory), summed in fp32.

    Each ``same_res[k]`` is [N, C, H, W]; at most 4 of each kind. ``up`` is ``F.interpolate(z, size=(H, W),
    mode=mode, align_corners=align_corners)``: with mode="nearest" each ``low_res[j]`` is [N, C, H/f, W/f] for a
    power-of-two f; with mode="bilinear" any [N, C, h, w] with h <= H and w <= W (align_corners True or False).
    Output in x's dtype and memory format.
    """
    out = direct.multires_fuse(x, low_res, same_res, relu, backend, mode=mode, align_corners=align_corners)
    if out is not None:
        return out
    low_res, same_res = list(low_res), list(same_res)
    check_multires_fuse(x, low_res, same_res, mode, align_corners)
    name = resolve("multires_fuse", x.device.type, backend)
    return torch.ops.hrnet_fast.multires_fuse(x, low_res, same_res, bool(relu), mode, align_corners, name)
