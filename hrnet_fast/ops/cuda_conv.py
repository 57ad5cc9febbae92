"""conv_bn_act on CUDA: cuDNN's fused conv + bias (+ residual) + ReLU where cuDNN runs it, else the convolution
followed by the library's epilogue kernel (both in csrc/cuda/conv_bn_act.cu).

cuDNN's fused operation (``at::cudnn_convolution_relu`` / ``_add_relu``) has no engine for some problems: the
3-channel stem, narrow fp16 channels_last convs, NCHW fp32, fp32 with TF32 off (and PyTorch issues 62926 and
68506 report such failures). Which problems it takes is decided once per (shapes, stride, padding, residual,
dtype, layout, TF32 flag, device), on the first call outside a CUDA-graph capture: the fused op is tried, and
if cuDNN refuses, the problem is recorded as unfused (with one warning) and that call and every later one run
the fallback. Only cuDNN's own "not supported" errors count as a refusal (``is_refusal``); any other error (a CUDA
fault such as an illegal address or a failed launch, a bad argument, out of memory) propagates, naming the problem,
and decides nothing. Inside a capture nothing is tried (a failing cuDNN call would invalidate the capture): an
undecided problem runs the fallback there, undecided still. Converted models warm up before capturing, so
their problems are decided by then.

Both paths follow ``torch.backends.cudnn.allow_tf32`` for fp32, as an eager convolution does.
"""
from __future__ import annotations

import functools
import re
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

from .checks import output_memory_format

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


# What torch raises when cuDNN declines a fused conv problem (ATen/native/cudnn/Conv_v8.cpp, the cuDNN v8/v9 API path
# of at::cudnn_convolution_relu / _add_relu): after every heuristic and fallback engine config failed, "GET was unable
# to find an engine to execute this computation" ("FIND ..." under torch.backends.cudnn.benchmark); building the
# operation graph fails before that with a cudnn_frontend error ending in "cudnn_status: CUDNN_STATUS_NOT_SUPPORTED"
# (cuDNN 9 adds sub-codes: _GRAPH_PATTERN, _SHAPE, _DATA_TYPE, _LAYOUT ...); the legacy v7 path raises "cuDNN error:
# CUDNN_STATUS_NOT_SUPPORTED". Other statuses (BAD_PARAM, EXECUTION_FAILED, INTERNAL_ERROR) and CUDA errors are faults.
_REFUSAL = re.compile(r"(GET|FIND) was unable to find an engine to execute this computation|CUDNN_STATUS_NOT_SUPPORTED")


def is_refusal(error: BaseException) -> bool:
    """Whether ``error`` is cuDNN declining the problem (no engine for it), as opposed to a fault."""
    return (isinstance(error, RuntimeError) and not isinstance(error, torch.cuda.OutOfMemoryError)
            and _REFUSAL.search(str(error)) is not None)


def describe_problem(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor], stride: int,
                     padding: int) -> str:
    """The problem a call poses, in words: for warnings and errors."""
    layout = "channels_last" if output_memory_format(x) == torch.channels_last else "NCHW"
    return (f"x {tuple(x.shape)} {x.dtype} {layout}, weight {tuple(weight.shape)}, stride {stride}, padding {padding}, "
            f"{'with' if residual is not None else 'no'} residual, on {x.device}")


def _with_context(error: BaseException, context: str) -> BaseException:
    """``error``, its message prefixed with ``context``; its type (an out-of-memory or accelerator error stays one)
    and traceback kept."""
    error.args = (f"{context}: {error.args[0]}" if error.args else context, *error.args[1:])
    return error


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
            problem = describe_problem(x, weight, residual, stride, padding)
            if not is_refusal(e):
                raise _with_context(e, f"hrnet_fast: cuDNN's fused conv+bias+ReLU failed on {problem}")
            # A fault inside cuDNN's engine search can surface as "no engine" too; a sticky CUDA error then fails
            # the fallback, which must not be recorded as a refusal.
            try:
                y = native(x, weight, bias, residual, stride, padding, relu, False)
            except RuntimeError as fallback_error:
                raise _with_context(fallback_error, f"hrnet_fast: conv {problem} failed after cuDNN refused to run "
                                                    f"it fused ({str(e).splitlines()[0]})") from e
            _fused_ok[key] = False
            warnings.warn(f"hrnet_fast: cuDNN has no fused conv+bias+ReLU for {problem} "
                          f"({str(e).splitlines()[0]}); this conv runs as convolution + epilogue kernel",
                          RuntimeWarning, stacklevel=2)
            return y
        _fused_ok[key] = True
        return y
    return native(x, weight, bias, residual, stride, padding, relu, fused)


def decisions() -> Dict[Tuple, bool]:
    """A copy of the decisions made so far: problem key -> whether cuDNN's fused op runs it."""
    return dict(_fused_ok)
