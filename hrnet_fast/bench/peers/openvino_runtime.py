"""OpenVINO on the CPU, twice: with fp32 inference forced, and at the precision OpenVINO picks by default
(its ``INFERENCE_PRECISION_HINT``: bf16 where the CPU has AMX or AVX512-BF16, else fp32). Both take and return
fp32 tensors; the precision actually used is read back from the compiled model and printed with the figures.

The model reaches OpenVINO through the same ONNX file the ONNX Runtime peer runs (one exporter, one graph for
both runtimes; it also converts faster than ``openvino.convert_model`` tracing the PyTorch module). Each batch size
gets its own compiled model with static shapes, as a deployment would compile it.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from .base import BuildContext, ImplSpec, Implementation
from .onnx_export import export_onnx

FP32 = "f32"


class _PerShapeModel:
    """Compiles the converted model once per input shape (on first use) and runs one inference request."""

    def __init__(self, model: Any, precision: Optional[str]):
        import openvino as ov
        self.core, self.model = ov.Core(), model
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        if precision is not None:
            self.config["INFERENCE_PRECISION_HINT"] = precision
        self.requests: Dict[Tuple[int, ...], Any] = {}

    def request(self, shape: Tuple[int, ...]) -> Any:
        """The inference request for inputs of ``shape``, compiled on first use."""
        if shape not in self.requests:
            model = self.model.clone()
            model.reshape({0: list(shape)})
            self.requests[shape] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        return self.requests[shape]

    def __call__(self, x: Any) -> list:
        request = self.request(x.shape)
        result = request.infer({0: x})
        return [result[out] for out in request.model_outputs]


def _build(model: nn.Module, ctx: BuildContext, precision: Optional[str]) -> Implementation:
    import openvino as ov
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(model, ctx.input_size, path)
        ov_model = ov.convert_model(path)
    runner = _PerShapeModel(ov_model, precision)
    batch1 = runner.request((1, getattr(model, "in_chans", 3), *ctx.input_size))
    hint = batch1.get_compiled_model().get_property("INFERENCE_PRECISION_HINT")
    return Implementation(runner, prepare=lambda x: x.float().numpy(),
                          info={"inference_precision": hint.to_string()})


def build_openvino_fp32(model: nn.Module, ctx: BuildContext) -> Implementation:
    return _build(model, ctx, FP32)


def build_openvino_default(model: nn.Module, ctx: BuildContext) -> Implementation:
    return _build(model, ctx, None)


OPENVINO_FP32 = ImplSpec("openvino_fp32", "OpenVINO fp32 (CPU)", build_openvino_fp32, peer="openvino",
                         devices=("cpu",), dtypes=("fp32",))
OPENVINO_DEFAULT = ImplSpec("openvino_default", "OpenVINO default precision (CPU)", build_openvino_default,
                            peer="openvino", devices=("cpu",), dtypes=("fp32",))
