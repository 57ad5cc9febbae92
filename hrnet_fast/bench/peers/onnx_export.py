"""The ONNX file the ONNX Runtime and OpenVINO peers run: fp32, CPU, the batch dimension dynamic, one named
output per leaf of the model's output (logits, or each feature map)."""
from __future__ import annotations

import copy
import warnings
from typing import List, Tuple

import torch
import torch.nn as nn

from ..compare import flatten_outputs


def export_onnx(model: nn.Module, input_size: Tuple[int, int], path: str) -> List[str]:
    """Writes ``model`` (fp32, CPU copy) to ``path``; returns its output names."""
    cpu = copy.deepcopy(model).cpu().float().eval()
    example = torch.randn(1, getattr(cpu, "in_chans", 3), *input_size)
    with torch.no_grad():
        leaves = len(flatten_outputs(cpu(example)))
    outputs = ["output"] if leaves == 1 else [f"output{i}" for i in range(leaves)]
    with warnings.catch_warnings():
        # The legacy (TorchScript) exporter needs no onnxscript; its tracer warns about the input checks.
        warnings.simplefilter("ignore")
        torch.onnx.export(cpu, (example,), path, dynamo=False, input_names=["input"], output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in ["input", *outputs]})
    return outputs
