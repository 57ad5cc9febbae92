"""The models under evaluation: the reference with the user's checkpoint, and ``convert()`` of it, each with the
dtype its input is cast to and the backend named in the report.

Checkpoint errors are rephrased in the command's terms (the ``--num-classes`` flag rather than the Python API's
advice), and a backend that cannot run on the device is refused before any image is read.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ..ops.backends import OPS, availability, select
from .errors import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Candidate:
    """A model under evaluation, the dtype its input is cast to (``DTYPES`` key; logits are compared in
    float32), and the backend it runs on, for the report."""
    name: str
    module: nn.Module
    dtype: str
    backend: str


def checkpoint_advice(error: Exception, num_classes: int) -> str:
    """A checkpoint error in this command's terms: the mismatch, one problem a line, and the flag that fixes it
    (``--num-classes``) instead of the Python API's advice."""
    details = getattr(error, "details", None)
    if details is None:
        return str(error)
    classes = getattr(error, "num_classes", None)
    if classes is not None and classes != num_classes:
        details += f"\n  The checkpoint has {classes} classes: pass --num-classes {classes}."
    return details


def build_reference(model_name: str, checkpoint: str, num_classes: int, device: torch.device) -> nn.Module:
    """The reference model with the checkpoint's weights, in eval mode on ``device``."""
    from ..checkpoints import CheckpointError, load_checkpoint
    from ..registry import create_model, resolve_name

    try:
        model = create_model(model_name, num_classes=num_classes)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not os.path.isfile(checkpoint):
        raise UserError(f"checkpoint not found: {checkpoint}")
    try:
        load_checkpoint(model, checkpoint, strict=True)
    except (CheckpointError, OSError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot load {checkpoint} into {resolve_name(model_name)} (--num-classes {num_classes}): "
                        f"{checkpoint_advice(e, num_classes)}") from None
    return model.eval().to(device)


def describe_backend(backend: Optional[str], device: torch.device) -> str:
    """The backend for the report: the one asked for, or what automatic selection picks per fused op.
    UserError when the one asked for cannot run both fused ops on ``device``."""
    if backend is None:
        return "auto: " + ", ".join(f"{op}={select(op, device, None)}" for op in OPS)
    for op in OPS:
        live, why = availability(backend, op, device.type)
        if not live:
            raise UserError(f"--backend {backend} cannot run {op} on {device}: {why}")
    return backend


def build_converted(reference: nn.Module, dtype: torch.dtype, backend: Optional[str],
                    cuda_graph: Optional[bool]) -> nn.Module:
    """``hrnet_fast.convert`` of the reference (a new module; the reference is left as it is)."""
    from ..convert import convert

    return convert(reference, dtype=dtype, backend=backend, cuda_graph=cuda_graph, inplace=False)
