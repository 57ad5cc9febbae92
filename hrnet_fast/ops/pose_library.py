"""The pose ops as ``torch.library`` custom ops (``torch.ops.hrnet_fast.crop_normalize`` / ``heatmap_decode``) with
fake implementations, so pipelines that call them work under ``torch.compile`` and ``torch.export``.

As in ``library.py``: inputs arrive validated (``pose_checks.py``) with a backend chosen (``backends.resolve``); the
op body forwards to that backend: ``torch`` the reference (``pose_reference.py``), ``triton`` the kernels in
``hrnet_fast_kernels``, ``cpu`` / ``cuda`` the compiled extension's ``torch.ops.hrnet_fast_C.*``.
"""
from __future__ import annotations

import functools
import importlib
from typing import Callable, List, Optional

import torch

from . import extension
from .library import check_no_grad, on_device
from .pose_reference import crop_normalize_reference, heatmap_decode_reference

POSE_OPS = ("crop_normalize", "heatmap_decode")


@functools.lru_cache(maxsize=None)
def implementation(op: str, backend: str) -> Callable:
    """The function running ``op`` on ``backend``, with the reference's positional signature."""
    if backend == "torch":
        return {"crop_normalize": crop_normalize_reference, "heatmap_decode": heatmap_decode_reference}[op]
    if backend == "triton":
        return getattr(importlib.import_module(f"hrnet_fast_kernels.{op}"), op)
    ok, why = extension.loaded()
    if not ok:
        raise RuntimeError(why)
    return getattr(torch.ops.hrnet_fast_C, op)


def run_crop_normalize(image: torch.Tensor, theta: torch.Tensor, out_h: int, out_w: int, mean: List[float],
                       std: List[float], dtype: torch.dtype, channels_last: bool, backend: str) -> torch.Tensor:
    check_no_grad("crop_normalize", theta)
    with on_device(backend, image):
        return implementation("crop_normalize", backend)(image, theta, out_h, out_w, mean, std, dtype, channels_last)


def run_heatmap_decode(heatmaps: torch.Tensor, centers: torch.Tensor, scales: torch.Tensor, method: str,
                       flipped: Optional[torch.Tensor], flip_index: Optional[torch.Tensor], shift_flipped: bool,
                       blur_kernel: int, backend: str) -> torch.Tensor:
    check_no_grad("heatmap_decode", heatmaps, centers, scales, flipped)
    with on_device(backend, heatmaps):
        return implementation("heatmap_decode", backend)(heatmaps, centers, scales, method, flipped, flip_index,
                                                         shift_flipped, blur_kernel)


# The hrnet_fast namespace is defined by library.py (imported above); the pose ops are a fragment of it.
_lib = torch.library.Library("hrnet_fast", "FRAGMENT")
_lib.define("crop_normalize(Tensor image, Tensor theta, int out_h, int out_w, float[] mean, float[] std, "
            "ScalarType dtype, bool channels_last, str backend) -> Tensor")
_lib.define("heatmap_decode(Tensor heatmaps, Tensor centers, Tensor scales, str method, Tensor? flipped, "
            "Tensor? flip_index, bool shift_flipped, int blur_kernel, str backend) -> Tensor")
_lib.impl("crop_normalize", run_crop_normalize, "CompositeExplicitAutograd")
_lib.impl("heatmap_decode", run_heatmap_decode, "CompositeExplicitAutograd")


@torch.library.register_fake("hrnet_fast::crop_normalize", lib=_lib)
def _(image, theta, out_h, out_w, mean, std, dtype, channels_last, backend):
    out = image.new_empty((theta.shape[0], 3, out_h, out_w), dtype=dtype)
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@torch.library.register_fake("hrnet_fast::heatmap_decode", lib=_lib)
def _(heatmaps, centers, scales, method, flipped, flip_index, shift_flipped, blur_kernel, backend):
    return heatmaps.new_empty((heatmaps.shape[0], heatmaps.shape[1], 3), dtype=torch.float32)
