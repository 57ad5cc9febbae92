"""Two figures that predict GPU speed on a machine without a GPU: ops dispatched per forward, and bytes of
activations written per forward.

At small batch an HRNet forward on a GPU waits on kernel launches (about one per dispatched op), and the rest
of its time is memory traffic; counting both on the CPU says how much a conversion removes before any GPU
timing exists. ``DispatchCounter`` is a ``TorchDispatchMode``: it sees every aten op and every registered
custom op (``torch.ops.hrnet_fast.*``) as one call, without looking inside it.

    counts = count_forward(model, torch.randn(1, 3, 224, 224))
    counts.ops, counts.bytes_written, counts.by_op.most_common(5)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass
class DispatchCounts:
    """What one run dispatched: op calls, bytes written to non-view outputs, and calls per op name."""

    ops: int = 0
    bytes_written: int = 0
    by_op: Counter = field(default_factory=Counter)

    def as_dict(self) -> Dict[str, Any]:
        return {"ops": self.ops, "bytes_written": self.bytes_written, "by_op": dict(self.by_op.most_common())}


def written_bytes(func: torch._ops.OpOverload, out: Any) -> int:
    """Bytes of the tensors ``func`` returned that it wrote: every output except views.

    A return whose schema aliases an input without writing it (``view``, ``t``, ``flatten`` …) is a view and
    writes nothing; an in-place or ``out=`` return (alias marked as written, e.g. ``relu_``) rewrites its
    memory and counts in full.
    """
    returns = func._schema.returns
    outputs = out if isinstance(out, tuple) and len(returns) > 1 else (out,)
    total = 0
    for ret, value in zip(returns, outputs):
        alias = ret.alias_info
        if alias is not None and not alias.is_write:
            continue
        total += sum(t.numel() * t.element_size() for t in tree_leaves(value) if isinstance(t, torch.Tensor))
    return total


class DispatchCounter(TorchDispatchMode):
    """Counts the ops dispatched while it is active (``with DispatchCounter() as c: ...; c.counts``).

    Ops called inside another op's implementation are not seen (the mode is off while an op runs), so a
    fused custom op counts once, as its single kernel launch would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts = DispatchCounts()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.counts.ops += 1
        self.counts.by_op[str(func)] += 1
        self.counts.bytes_written += written_bytes(func, out)
        return out


def count_forward(model: Callable[[torch.Tensor], Any], x: torch.Tensor) -> DispatchCounts:
    """Ops dispatched and activation bytes written by one ``model(x)``.

    Runs under ``torch.no_grad()`` rather than ``inference_mode``: under inference mode composite ops
    (``conv2d``, ``batch_norm``) reach the counter undecomposed, while under no_grad it sees the aten ops they
    become (``convolution``, ``native_batch_norm``), which is what actually runs.
    """
    with torch.no_grad(), DispatchCounter() as counter:
        model(x)
    return counter.counts
