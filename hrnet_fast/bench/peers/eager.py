"""Eager PyTorch: the reference (NCHW) and the channels_last variant a user might try first."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .base import BuildContext, ImplSpec, Implementation


def _eager(model: nn.Module, ctx: BuildContext, memory_format: torch.memory_format) -> Implementation:
    m = copy.deepcopy(model).to(device=ctx.device, dtype=ctx.torch_dtype, memory_format=memory_format).eval()
    return Implementation(m, prepare=lambda x: x.contiguous(memory_format=memory_format))


def build_reference(model: nn.Module, ctx: BuildContext) -> Implementation:
    return _eager(model, ctx, torch.contiguous_format)


def build_channels_last(model: nn.Module, ctx: BuildContext) -> Implementation:
    return _eager(model, ctx, torch.channels_last)


REFERENCE = ImplSpec("reference", "reference (eager PyTorch)", build_reference)
CHANNELS_LAST = ImplSpec("channels_last", "channels_last eager", build_channels_last, peer="channels_last")
