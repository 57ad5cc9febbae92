"""The one interface every implementation the benchmark times is built behind.

An implementation is a way to run the model: eager PyTorch, ``hrnet_fast.convert()``, or a peer a user would pick
instead. Each lives in its own module under ``hrnet_fast.bench.peers`` and declares itself with an ``ImplSpec``:
its name, its table label, where it runs, and a ``build`` function that turns the calibrated reference model into
an ``Implementation``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BenchError(Exception):
    """A setting the benchmark cannot run with (reported as a one-line error, exit status 2)."""


def _same(x: Any) -> Any:
    return x


@dataclass
class Implementation:
    """One way to run the model: ``forward(prepare(x))`` is a forward pass on the benchmark input ``x``.

    ``forward`` may return what its runtime returns (a tensor, a NumPy array, or a list/tuple/dict of them);
    ``hrnet_fast.bench.compare`` flattens any of these into tensors. ``info`` holds facts the report prints
    beside the figures (e.g. the precision a runtime chose).
    """

    forward: Callable[[Any], Any]
    prepare: Callable[[torch.Tensor], Any] = _same
    info: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildContext:
    """What a builder needs besides the model: where and in what precision it runs, at which input size."""

    device: torch.device
    dtype: str
    input_size: Tuple[int, int] = (224, 224)
    cuda_graph: Optional[bool] = None  # convert()'s: None = graphs wherever the model runs on CUDA

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class ImplSpec:
    """An implementation the benchmark knows: ``peer`` is the ``--peers`` name that turns it on (None for the
    reference and the converted model, which always run); ``devices`` / ``dtypes`` limit where it has a cell
    (None: everywhere)."""

    name: str
    label: str
    build: Callable[[nn.Module, BuildContext], Implementation]
    peer: Optional[str] = None
    devices: Optional[Tuple[str, ...]] = None
    dtypes: Optional[Tuple[str, ...]] = None

    def runs(self, device_type: str, dtype: str) -> bool:
        return (self.devices is None or device_type in self.devices) and (self.dtypes is None or dtype in self.dtypes)
