"""Eager CPU calls of the fused ops without the dispatcher's layers.

A call through ``torch.ops.hrnet_fast.*`` parses its arguments against the op schema (~3.5 us for
``multires_fuse``'s tensor lists) and then runs the op's Python body (``library.py``): ~6 us before a kernel
starts, as long as the whole kernel on HRNet's 7x7 branch or a 1x1 fusion conv. Eager CPU calls skip that where
the dispatcher would only have passed them through: no torch.compile tracing, no dispatch or function mode (op
counting, fake tensors), no subclass, nothing that needs autograd. Everywhere else, callers take the registered op.

* ``multires_fuse`` calls the compiled CPU kernel through ``hrnet_fast._C.multires_fuse_cpu``, which checks all
  of the above in C++ and returns None where the call must take the registered op (also on input the op rejects,
  whose error the op path then raises).
* ``plain_eager_call`` tells Python callers (the public ``conv_bn_act``) when calling the backend function
  directly is what the registered op would have done.
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


def cpu_fuse_available() -> bool:
    """Whether eager CPU fusions run the compiled kernel (the cpu backend resolved, the extension loaded)."""
    return _cpu_entry() is not None


_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def plain_eager_call(*tensors: Optional[torch.Tensor]) -> bool:
    """True when calling a backend function directly gives what ``torch.ops.hrnet_fast.*`` would: eager (not
    tracing for torch.compile), no TorchDispatchMode or TorchFunctionMode active, plain tensors (None allowed),
    and none needing a gradient (the registered ops have no backward and refuse such inputs by name)."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or \
            torch._C._is_torch_function_mode_enabled():
        return False
    grad = torch.is_grad_enabled()
    return all(t is None or (type(t) in _PLAIN_TYPES and not (grad and t.requires_grad)) for t in tensors)


def multires_fuse(x: torch.Tensor, low_res: Sequence[torch.Tensor], same_res: Sequence[torch.Tensor], relu: bool,
                  backend: Optional[str], *, mode: str = "nearest", align_corners: bool = False
                  ) -> Optional[torch.Tensor]:
    """``relu(x + sum up(low_res) + sum same_res)`` through the compiled CPU kernel, or None where the call must go
    through ``torch.ops.hrnet_fast.multires_fuse`` (see the module docstring)."""
    # Only what the C++ side cannot see: tracing, the backend asked for, and CPU input (so that a CUDA call never
    # resolves the CPU backend). Which tensors qualify is decided in one place, the entry point.
    if torch.compiler.is_compiling() or backend not in (None, "cpu") or not isinstance(x, torch.Tensor) or \
            not x.is_cpu:
        return None
    entry = _cpu_entry()
    return entry(x, low_res, same_res, relu, mode, align_corners) if entry is not None else None
