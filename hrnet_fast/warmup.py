"""``hrnet_fast.warmup(model, shapes)``: do a model's one-off first-call work before the first real input.

A first forward per input shape pays for work later calls skip: Triton compiles its kernels and times a short list
of configs per shape class (the choice persists on disk, so later processes on the same GPU skip the timing, see
``hrnet_fast_kernels/tuning.py``), cuDNN picks its algorithms, the CPU backend packs weights, and a model converted
with ``cuda_graph=True`` captures one graph per shape. On the CPU a converted model's first call lists the steps
it replays and its first replayed call decides, by timing both, whether an HR module's branches run one after
another or at once (``parallel_branches=None``, ``convert/replay.py``), so there each shape is run twice. Calling
``warmup`` at start-up moves all of it there.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn as nn


def _model_tensor(model: nn.Module) -> Optional[torch.Tensor]:
    for t in model.parameters():
        return t
    for t in model.buffers():
        return t
    return None


def warmup(model: nn.Module, shapes: Iterable[Sequence[int]], *, dtype: Optional[torch.dtype] = None,
           device: Optional[torch.device] = None) -> Dict[Tuple[int, ...], float]:
    """Runs ``model`` on a random input of each shape (once, twice on the CPU: see the module docstring); returns
    the seconds each shape's warm-up calls took.

    Args:
        model: a converted model (``hrnet_fast.convert``) or any module.
        shapes: input shapes, (N, C, H, W), or (N, H, W) for a 3-channel image batch.
        dtype, device: of the inputs; default: the converted model's dtype, else the model's first tensor's
            dtype and device.
    """
    ref = _model_tensor(model)
    dtype = dtype or getattr(model, "dtype", None) or (ref.dtype if ref is not None else torch.float32)
    device = torch.device(device) if device is not None else (ref.device if ref is not None else torch.device("cpu"))
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    seconds: Dict[Tuple[int, ...], float] = {}
    for shape in shapes:
        shape = tuple(int(s) for s in shape)
        if len(shape) == 3:
            shape = (shape[0], 3) + shape[1:]
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(f"warmup shapes are (N, C, H, W) or (N, H, W) with positive sizes, got {shape}")
        x = torch.randn(shape, device=device).to(dtype)
        begin = time.perf_counter()
        with torch.inference_mode():
            for _ in range(2 if device.type == "cpu" else 1):
                model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[shape] = time.perf_counter() - begin
    return seconds
