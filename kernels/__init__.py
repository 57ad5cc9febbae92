"""Triton kernels for the fused ops, one module per op (setup.py installs this folder as ``hrnet_fast_kernels``).

Each module exposes a function named after its op with the signature of the reference in
``hrnet_fast/ops/reference.py``; ``hrnet_fast.ops.backends`` imports it on first use of the ``triton`` backend, with
inputs already validated by ``hrnet_fast/ops/checks.py``.

``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is decorated, that is when its module is imported: set the
variable before the first import (tests/conftest.py does) and the kernels run on CPU tensors through the
interpreter. The modules read the same knob at import to keep one launch config there (no tuning).

Only the small launch helpers both ops share live here; nothing in this file imports triton.
"""
from __future__ import annotations

import torch

# Index arithmetic runs in int32 unless some element offset could reach this value.
INT32_LIMIT = 2 ** 31


def max_offset(t: torch.Tensor) -> int:
    """The largest element offset any index of ``t`` reaches from its data pointer (0 for an empty tensor)."""
    if t.numel() == 0:
        return 0
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))


def conv_dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision for a convolution in ``dtype``: float32 follows
    ``torch.backends.cudnn.allow_tf32`` as an eager convolution does (TF32 when allowed, IEEE float32 otherwise), so
    backends agree with eager PyTorch under the same flags; 16-bit inputs multiply exactly either way."""
    return "ieee" if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32 else "tf32"


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether a kernel indexing these tensors must compute offsets in int64 to avoid int32 overflow."""
    return any(max(t.numel(), max_offset(t) + 1) >= INT32_LIMIT for t in tensors)
