"""What the pose pipeline needs to know about the model it is given: that it is a top-down pose HRNet, how many
joints it predicts, and the device and dtype it runs in, for every layout the library takes (ours, the official
repository's, mmpose's ``backbone`` + ``head.final_layer`` / ``keypoint_head.final_layer``), converted or not."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from ..convert import ConvertedModel

# Where the 1x1 heatmap conv sits: ours and the official layout, mmpose 1.x, mmpose 0.x.
_HEAD_PATHS = ("final_layer", "head.final_layer", "keypoint_head.final_layer")


def _heatmap_conv(model: nn.Module) -> Optional[torch.Tensor]:
    """The weight of the model's heatmap conv (a plain conv, or the fused module convert() put in its place)."""
    for path in _HEAD_PATHS:
        try:
            head = model.get_submodule(path)
        except AttributeError:
            continue
        weight = getattr(head, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1):
            return weight
    return None


def pose_joints(model: nn.Module) -> int:
    """The number of heatmaps (joints) ``model`` predicts; TypeError for anything but a pose model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"the pose model must be an nn.Module, got {type(model).__name__}")
    inner = model.inner if isinstance(model, ConvertedModel) else model
    task = getattr(inner, "task", None)
    weight = _heatmap_conv(inner) if task in (None, "pose") else None
    if weight is None:
        what = f"a {task} model" if task else f"{type(inner).__name__}, which has no 1x1 heatmap conv"
        raise TypeError(f"TopDownPose needs a top-down pose HRNet (heatmaps from a 1x1 conv at "
                        f"{', '.join(_HEAD_PATHS)}), got {what}; build one with "
                        f"hrnet_fast.create_model('pose_hrnet_w32')")
    return int(weight.shape[0])


def device_and_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """The device and floating-point dtype the model computes in."""
    if isinstance(model, ConvertedModel):
        return model.device, model.dtype
    tensor = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None)
    if tensor is None:
        raise ValueError("the pose model has no floating-point parameters")
    return tensor.device, tensor.dtype
