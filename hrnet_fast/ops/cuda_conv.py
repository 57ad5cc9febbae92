"""conv_bn_act on CUDA: cuDNN's fused conv + bias (+ residual) + ReLU where cuDNN runs it, else the convolution
followed by the library's epilogue kernel (both in csrc/cuda/conv_bn_act.cu).

cuDNN's fused operation (``at::cudnn_convolution_relu`` / ``_add_relu``) has no engine for some problems: the
3-channel stem, narrow fp16 channels_last convs, NCHW fp32, fp32 with TF32 off (and PyTorch issues 62926 and
68506 report such failures). Which problems it takes is decided once per (shapes, stride, padding, residual,
dtype, layout, TF32 flag, device), on the first call outside a CUDA-graph capture: the fused op is tried, and
if cuDNN refuses, the problem is recorded as unfused (with one warning) and that call and every later one run
the fallback. Inside a capture nothing is tried (a failing cuDNN call would invalidate the capture): an
undecided problem runs the fallback there, undecided still. Converted models warm up before capturing, so
their problems are decided by then.

Both paths follow ``torch.backends.cudnn.allow_tf32`` for fp32, as an eager convolution does.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

from .library import output_memory_format

# Problem -> whether cuDNN's fused op runs it.
_fused_ok: Dict[Tuple, bool] = {}


@functools.lru_cache(maxsize=None)
def _native() -> Callable:
    from . import extension
    extension.module()  # registers torch.ops.hrnet_fast_C
    return torch.ops.hrnet_fast_C.conv_bn_act


def problem_key(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor], stride: int,
                padding: int) -> Tuple:
    """What decides whether cuDNN has a fused engine for a call."""
    return (x.shape, weight.shape, stride, padding, residual is not None, x.dtype, output_memory_format(x),
            torch.backends.cudnn.allow_tf32, x.device)


def _refused(error: RuntimeError) -> bool:
    """Whether ``error`` is cuDNN declining the problem, as opposed to running out of memory."""
    return not isinstance(error, torch.cuda.OutOfMemoryError)


def conv_bn_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, stride: int, padding: int,
                residual: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias) + residual)`` on validated CUDA tensors (the ``cuda`` backend)."""
    native = _native()
    if not relu or not torch.backends.cudnn.enabled:  # cuDNN's fused op exists only with ReLU
        return native(x, weight, bias, residual, stride, padding, relu, False)
    key = problem_key(x, weight, residual, stride, padding)
    fused = _fused_ok.get(key)
    if fused is None:
        if torch.cuda.is_current_stream_capturing():
            return native(x, weight, bias, residual, stride, padding, relu, False)
        try:
            y = native(x, weight, bias, residual, stride, padding, relu, True)
        except RuntimeError as e:
            if not _refused(e):
                raise
            _fused_ok[key] = False
            warnings.warn(f"hrnet_fast: cuDNN has no fused conv+bias+ReLU for x {tuple(x.shape)} {x.dtype} "
                          f"{'channels_last' if output_memory_format(x) == torch.channels_last else 'NCHW'}, weight "
                          f"{tuple(weight.shape)}, stride {stride} ({str(e).splitlines()[0]}); this conv runs as "
                          f"convolution + epilogue kernel", RuntimeWarning, stacklevel=2)
            return native(x, weight, bias, residual, stride, padding, relu, False)
        _fused_ok[key] = True
        return y
    return native(x, weight, bias, residual, stride, padding, relu, fused)


def decisions() -> Dict[Tuple, bool]:
    """A copy of the decisions made so far: problem key -> whether cuDNN's fused op runs it."""
    return dict(_fused_ok)
