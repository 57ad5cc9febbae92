"""Output-agnostic agreement check: a model may return a tensor (classification logits), a list of tensors
(multi-scale features, pose heatmaps) or a dict; a runtime may return NumPy arrays. All are flattened to a list
of float tensors in a fixed order and compared leaf by leaf."""
from __future__ import annotations

from typing import Any, List

import numpy as np
import torch


def flatten_outputs(out: Any) -> List[torch.Tensor]:
    """The leaves of ``out`` (tensor, NumPy array, or nested list/tuple/dict of them), in order, as tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, np.ndarray):
        return [torch.from_numpy(np.array(out, copy=True))]  # a runtime may reuse the buffer on its next call
    if isinstance(out, dict):
        return [t for key in out for t in flatten_outputs(out[key])]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in flatten_outputs(item)]
    raise TypeError(f"cannot compare a model output of type {type(out).__name__}; expected a tensor, a NumPy "
                    f"array, or a list/tuple/dict of them")


def relative_error(out: Any, ref: Any) -> float:
    """The largest relative L2 difference over the outputs' leaves (ValueError when their structure differs)."""
    ys, refs = flatten_outputs(out), flatten_outputs(ref)
    if len(ys) != len(refs):
        raise ValueError(f"outputs differ in structure: {len(ys)} tensors against the reference's {len(refs)}")
    worst = 0.0
    for i, (y, r) in enumerate(zip(ys, refs)):
        y, r = y.detach().float().cpu(), r.detach().float().cpu()
        if y.shape != r.shape:
            raise ValueError(f"output {i} has shape {tuple(y.shape)}, the reference's {tuple(r.shape)}")
        worst = max(worst, float((y - r).norm() / r.norm().clamp_min(1e-30)))
    return worst
