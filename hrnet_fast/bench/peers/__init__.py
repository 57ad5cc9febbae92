"""Every implementation the benchmark can time, one module each, all behind ``base.ImplSpec``.

To add a peer: write a module with a ``build(model, ctx) -> Implementation`` function and an ``ImplSpec`` naming
its ``--peers`` name, then list the spec in ``SPECS``. The options, the settings checks, the tables and the JSON
follow from the spec.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .base import DTYPES, BenchError, BuildContext, Implementation, ImplSpec
from .compiled import COMPILE
from .converted import CONVERTED, convert_fn
from .eager import CHANNELS_LAST, REFERENCE
from .onnx_runtime import ONNXRUNTIME
from .openvino_runtime import OPENVINO_DEFAULT, OPENVINO_FP32

SPECS: Dict[str, ImplSpec] = {s.name: s for s in (REFERENCE, CONVERTED, CHANNELS_LAST, COMPILE, ONNXRUNTIME,
                                                   OPENVINO_FP32, OPENVINO_DEFAULT)}
# The --peers names, in the order their implementations appear in the tables.
PEERS: Tuple[str, ...] = tuple(dict.fromkeys(s.peer for s in SPECS.values() if s.peer is not None))
LABELS: Dict[str, str] = {name: s.label for name, s in SPECS.items()}


def peer_implementations(peer: str) -> List[str]:
    """The implementations a ``--peers`` name turns on (``openvino`` -> its fp32 and default-precision runs)."""
    return [name for name, s in SPECS.items() if s.peer == peer]


def build_implementation(name: str, model: nn.Module, device: torch.device, dtype: str, *,
                         input_size: Tuple[int, int] = (224, 224), cuda_graph: Optional[bool] = None) -> Implementation:
    """The implementation ``name`` (reference, converted or a peer's) of ``model`` at precision ``dtype``."""
    if name not in SPECS:
        raise ValueError(f"unknown implementation {name!r}; choose from {', '.join(SPECS)}")
    ctx = BuildContext(torch.device(device), dtype, tuple(input_size), cuda_graph)
    return SPECS[name].build(model, ctx)


__all__ = ["DTYPES", "BenchError", "BuildContext", "Implementation", "ImplSpec", "SPECS", "PEERS", "LABELS",
           "build_implementation", "convert_fn", "peer_implementations"]
