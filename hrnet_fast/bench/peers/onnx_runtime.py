"""ONNX Runtime on the CPU (fp32), with as many intra-op threads as torch has."""
from __future__ import annotations

import os
import tempfile

import torch
import torch.nn as nn

from .base import BuildContext, ImplSpec, Implementation
from .onnx_export import export_onnx


def build_onnxruntime(model: nn.Module, ctx: BuildContext) -> Implementation:
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(model, ctx.input_size, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same cores torch gets
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return Implementation(lambda x: session.run(None, {"input": x}), prepare=lambda x: x.float().numpy())


ONNXRUNTIME = ImplSpec("onnxruntime", "ONNX Runtime (CPU)", build_onnxruntime, peer="onnxruntime",
                       devices=("cpu",), dtypes=("fp32",))
