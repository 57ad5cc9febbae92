"""Input validation shared by every backend (a clear error before any kernel runs), and the output shape and
memory format every backend returns."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_TERMS = 4


def _check_float_4d(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be a 4-D (N, C, H, W) tensor, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; supported dtypes are float32, float16 and bfloat16")


def _check_like(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}; all inputs must share one dtype")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}; all inputs must be on one device")


def check_conv_bn_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
                      padding: int, residual: Optional[torch.Tensor]) -> None:
    _check_float_4d("x", x)
    _check_float_4d("weight", weight)
    _check_like("weight", weight, x)
    cout, cin, kh, kw = weight.shape
    if kh != kw or kh not in (1, 3):
        raise ValueError(f"weight must be a 1x1 or 3x3 kernel, got {kh}x{kw} (shape {tuple(weight.shape)})")
    if x.shape[1] != cin:
        raise ValueError(f"x has {x.shape[1]} channels but weight expects {cin} (weight shape "
                         f"{tuple(weight.shape)}, groups=1)")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if not 0 <= padding <= kh // 2:
        raise ValueError(f"padding must be between 0 and {kh // 2} for a {kh}x{kh} kernel, got {padding}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (cout,):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"bias must have shape ({cout},), got {shape}")
        _check_like("bias", bias, x)
    out_shape = conv_out_shape(x.shape, weight.shape, stride, padding)
    if out_shape[2] <= 0 or out_shape[3] <= 0:
        raise ValueError(f"input of spatial size {tuple(x.shape[2:])} is too small for a {kh}x{kh} kernel with "
                         f"padding {padding}")
    if residual is not None:
        _check_float_4d("residual", residual)
        _check_like("residual", residual, x)
        if tuple(residual.shape) != out_shape:
            raise ValueError(f"residual has shape {tuple(residual.shape)} but the conv output is {out_shape}")


def conv_out_shape(x_shape: Sequence[int], w_shape: Sequence[int], stride: int, padding: int):
    n, _, h, w = x_shape
    k = w_shape[2]
    return (n, w_shape[0], (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1)


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is laid out that way (and is not ambiguous NCHW), else contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


UPSAMPLE_MODES = ("nearest", "bilinear")


def check_upsample_mode(mode: str, align_corners: bool) -> None:
    """mode is one multires_fuse implements; align_corners is only meaningful for bilinear (as in F.interpolate)."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, UPSAMPLE_MODES))}, got {mode!r}")
    if not isinstance(align_corners, bool):
        raise TypeError(f"align_corners must be a bool, got {type(align_corners).__name__}")
    if align_corners and mode != "bilinear":
        raise ValueError(f"align_corners=True only applies to mode='bilinear', not mode={mode!r}")


def _check_upsamplable(name: str, z: torch.Tensor, x: torch.Tensor, mode: str) -> None:
    """z's spatial size is one ``mode`` can bring to x's: a power-of-two factor (nearest), at most x's (bilinear)."""
    (h, w), (zh, zw) = x.shape[2:], z.shape[2:]
    if mode == "bilinear":
        if not (0 < zh <= h and 0 < zw <= w):
            raise ValueError(f"{name} is {zh}x{zw} and x is {h}x{w}: bilinear low_res inputs must be non-empty and "
                             f"no larger than x in either dimension")
        return
    ok = zh > 0 and zw > 0 and h % zh == 0 and w % zw == 0 and h // zh == w // zw
    factor = h // zh if ok else 0
    if not ok or factor & (factor - 1):
        raise ValueError(f"{name} is {zh}x{zw} and x is {h}x{w}: low_res inputs must be smaller than x by one "
                         f"power-of-two factor in both dimensions (mode='nearest'; mode='bilinear' takes any size "
                         f"up to x's)")


def check_multires_fuse(x: torch.Tensor, low_res: Sequence[torch.Tensor], same_res: Sequence[torch.Tensor],
                        mode: str = "nearest", align_corners: bool = False) -> None:
    check_upsample_mode(mode, align_corners)
    _check_float_4d("x", x)
    if len(low_res) > MAX_TERMS or len(same_res) > MAX_TERMS:
        raise ValueError(f"multires_fuse takes at most {MAX_TERMS} low_res and {MAX_TERMS} same_res inputs, got "
                         f"{len(low_res)} and {len(same_res)}")
    n, c, h, w = x.shape
    if h == 0 or w == 0:
        raise ValueError(f"x has an empty spatial size {tuple(x.shape[2:])}")
    for i, z in enumerate(low_res):
        name = f"low_res[{i}]"
        _check_float_4d(name, z)
        _check_like(name, z, x)
        if z.shape[0] != n or z.shape[1] != c:
            raise ValueError(f"{name} has shape {tuple(z.shape)}; batch and channels must match x {tuple(x.shape)}")
        _check_upsamplable(name, z, x, mode)
    for i, d in enumerate(same_res):
        name = f"same_res[{i}]"
        _check_float_4d(name, d)
        _check_like(name, d, x)
        if d.shape != x.shape:
            raise ValueError(f"{name} has shape {tuple(d.shape)} but x has {tuple(x.shape)}")
