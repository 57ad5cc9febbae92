"""``torch.compile`` (inductor) with freezing, as an inference deployment would use it."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .base import BuildContext, ImplSpec, Implementation


def build_compiled(model: nn.Module, ctx: BuildContext) -> Implementation:
    m = copy.deepcopy(model).to(device=ctx.device, dtype=ctx.torch_dtype).eval()
    # Freezing folds the weights (and BN) into constants.
    return Implementation(torch.compile(m, options={"freezing": True}))


COMPILE = ImplSpec("compile", "torch.compile (inductor, freezing)", build_compiled, peer="compile")
