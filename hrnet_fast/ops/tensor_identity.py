"""What identifies a tensor's contents for a consumer that holds its pointer (prepared weights, kept oneDNN
primitives, CUDA graphs, replayed stages): where it lives and how often it was written in place."""
from __future__ import annotations

from typing import Tuple

import torch


def version(t: torch.Tensor) -> int:
    """``t``'s in-place write counter; -1 for an inference tensor, which keeps none (and cannot be written in
    place outside inference mode)."""
    return -1 if t.is_inference() else t._version


def signature(t: torch.Tensor) -> Tuple:
    """A move, a cast or a replaced tensor changes the pointer; an in-place write the version (inference tensors
    keep no version counter: in-place writes to them under inference mode go unseen)."""
    return t.data_ptr(), version(t), t.device, t.dtype
