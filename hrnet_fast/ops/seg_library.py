"""The segmentation ops as ``torch.library`` custom ops with fake implementations: ``torch.ops.hrnet_fast.
seg_normalize`` (uint8 HWC images -> normalised float NCHW) and ``torch.ops.hrnet_fast.resize_argmax`` (bilinear
resize of class logits fused with the per-pixel argmax, and optionally the winner's softmax probability).

Inputs arrive validated (``seg_checks.py``) with a backend chosen (``backends.resolve``); each op body forwards to
that backend's implementation (``implementation``). Public entry points: ``hrnet_fast.segment.ops``.
"""
from __future__ import annotations

import functools
import importlib
from typing import Callable, List, Tuple

import torch

from .library import check_no_grad, on_device
from .seg_checks import label_shape, normalize_out_format, prob_shape


@functools.lru_cache(maxsize=None)
def implementation(op: str, backend: str) -> Callable:
    """``op`` on ``backend`` with the op body's signature (inputs validated, images 4-D):
    seg_normalize(images, mean, std, dtype, channels_last) -> out;
    resize_argmax(logits, out_h, out_w, align_corners, with_prob, out_dtype) -> (labels, prob or an empty [0])."""
    if backend == "torch":
        from ..segment import ops as segment_ops
        return {"seg_normalize": segment_ops.normalize_reference_op,
                "resize_argmax": segment_ops.resize_argmax_reference_op}[op]
    if backend == "triton":
        return getattr(importlib.import_module(f"hrnet_fast_kernels.{op}"), op)
    from . import extension
    ok, why = extension.loaded()
    if not ok:
        raise RuntimeError(why)
    return getattr(getattr(torch.ops, extension.LIBRARY), op)


def run_seg_normalize(images: torch.Tensor, mean: List[float], std: List[float], dtype: torch.dtype,
                      channels_last: bool, backend: str) -> torch.Tensor:
    impl = implementation("seg_normalize", backend)
    with on_device(backend, images):
        return impl(images, list(mean), list(std), dtype, channels_last)


def run_resize_argmax(logits: torch.Tensor, out_h: int, out_w: int, align_corners: bool, with_prob: bool,
                      out_dtype: torch.dtype, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    check_no_grad("resize_argmax", logits)
    impl = implementation("resize_argmax", backend)
    with on_device(backend, logits):
        return impl(logits, out_h, out_w, align_corners, with_prob, out_dtype)


# The low-level Library API, as library.py defines the fused ops (a call costs ~2 us instead of ~7-11 us); one
# kernel for every device, the backend argument picks the implementation.
_lib = torch.library.Library("hrnet_fast", "FRAGMENT")
_lib.define("seg_normalize(Tensor images, float[] mean, float[] std, ScalarType dtype, bool channels_last, "
            "str backend) -> Tensor")
_lib.define("resize_argmax(Tensor logits, int out_h, int out_w, bool align_corners, bool with_prob, "
            "ScalarType out_dtype, str backend) -> (Tensor, Tensor)")
_lib.impl("seg_normalize", run_seg_normalize, "CompositeExplicitAutograd")
_lib.impl("resize_argmax", run_resize_argmax, "CompositeExplicitAutograd")


@torch.library.register_fake("hrnet_fast::seg_normalize", lib=_lib)
def _(images, mean, std, dtype, channels_last, backend):
    n, h, w, _ = images.shape
    return images.new_empty((n, 3, h, w), dtype=dtype).contiguous(memory_format=normalize_out_format(channels_last))


@torch.library.register_fake("hrnet_fast::resize_argmax", lib=_lib)
def _(logits, out_h, out_w, align_corners, with_prob, out_dtype, backend):
    labels = logits.new_empty(label_shape(logits.shape, out_h, out_w), dtype=out_dtype)
    prob = logits.new_empty(prob_shape(logits.shape, out_h, out_w, with_prob), dtype=torch.float32)
    return labels, prob
