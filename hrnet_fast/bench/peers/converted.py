"""``hrnet_fast.convert()``: the model with BN folded and the fused ops swapped in; on a GPU (unless
``--no-cuda-graph``) the converted model replays each input shape's forward from one captured CUDA graph."""
from __future__ import annotations

import copy
from typing import Callable

import torch.nn as nn

from .base import BenchError, BuildContext, ImplSpec, Implementation


def convert_fn() -> Callable[..., nn.Module]:
    """``hrnet_fast.convert``, or BenchError: the converted model is never silently replaced by another."""
    import hrnet_fast
    convert = getattr(hrnet_fast, "convert", None)
    if not callable(convert):  # missing, or only the subpackage without its function
        raise BenchError("hrnet_fast.convert() is not available in this installation; the benchmark cannot time "
                         "the converted model without it")
    return convert


def build_converted(model: nn.Module, ctx: BuildContext) -> Implementation:
    convert = convert_fn()
    return Implementation(convert(copy.deepcopy(model).to(ctx.device), dtype=ctx.torch_dtype,
                                  cuda_graph=ctx.cuda_graph, inplace=True))


CONVERTED = ImplSpec("converted", "converted (hrnet_fast.convert)", build_converted)
