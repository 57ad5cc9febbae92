"""Eager CPU ``multires_fuse`` without the dispatcher's argument parsing.

Calling ``torch.ops.hrnet_fast.multires_fuse`` costs ~3.5 us of schema parsing per call for its tensor lists
before the kernel starts, which on HRNet's smallest branch (144 channels at 7x7) is as long as the kernel itself.
``multires_fuse`` here calls the compiled CPU kernel through ``hrnet_fast._C.multires_fuse_cpu`` instead, which
runs only where the dispatcher would have reached that same kernel (plain CPU tensors, no modes, no autograd,
input the op accepts) and returns None everywhere else, so callers then take the registered op: under
torch.compile, torch.export, a TorchDispatchMode (op counting), with subclassed or GPU tensors, and on bad input,
whose error the op path raises.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import torch

from . import backends, extension


@functools.lru_cache(maxsize=None)
def _cpu_entry() -> Optional[Callable]:
    """The extension's eager CPU fusion entry point, where the cpu backend is the one CPU calls resolve to."""
    if backends.resolve("multires_fuse", "cpu", None) != "cpu":
        return None
    return getattr(extension.module(), "multires_fuse_cpu", None)


def multires_fuse(x: torch.Tensor, low_res: Sequence[torch.Tensor], same_res: Sequence[torch.Tensor], relu: bool,
                  backend: Optional[str]) -> Optional[torch.Tensor]:
    """``relu(x + sum up(low_res) + sum same_res)`` through the compiled CPU kernel, or None where the call must go
    through ``torch.ops.hrnet_fast.multires_fuse`` (see the module docstring)."""
    if torch.compiler.is_compiling() or backend not in (None, "cpu") or type(x) is not torch.Tensor or not x.is_cpu:
        return None
    entry = _cpu_entry()
    return entry(x, low_res, same_res, relu) if entry is not None else None
