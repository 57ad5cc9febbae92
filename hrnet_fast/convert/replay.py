"""A converted HRNet's stages and branches replayed in one C++ call on CPU, instead of a Python call per conv.

On CPU at batch 1 the convolution kernels of a converted HRNet-W18 take ~24 ms of a ~29 ms forward; ~3 ms is
Python and dispatch, about 6 us around each of ~300 fused convs (module calls, argument checks). An *owner*
(``FusedStage``, ``FusedHRModule``, ``FusedBranch``) therefore runs its module path once, then lists what that
path does as steps for the extension (csrc/cpu/replay.cpp): each conv's kept oneDNN primitives
(``OnednnConv``) and each ``multires_fuse``, on numbered slots. Later calls run the steps in one call: the same
kernels with the same arguments, so the same bits, at ~0.5 us a step. Between steps a tensor is summed in place
wherever no later step reads it (an HR module's first blocks too, which the module path must copy), and dropped
after its last read.

The steps stand for the modules only while those are as they were: each call checks (in C++, ~85 us for a whole W18
forward's 15,000 watched entries, 0.3 % of it) that no hook was added or removed on the owner, a module inside it or
globally, that no attribute, child, parameter or buffer of one was set, and that no conv weight was replaced or
written in place. Where anything changed, the call takes the module path and the steps are listed again (a hook on
the owner itself runs around its replayed calls as around any; one inside it keeps the owner on the module path
while it is there). The module path also runs for everything the steps do not take as given: torch.compile or
torch.jit tracing, dispatch or function modes, tensors needing grad, another dtype or layout, oneDNN switched off
(``torch.backends.mkldnn``), a conv on ATen's path or another backend, a module that does not list its own steps (a
class without its own ``_emit``: one the converter did not make, or a subclass), and calls off the CPU.
``HRNET_FAST_NO_REPLAY=1`` (read when steps are listed) keeps every call on the module path.

Branch-parallel schedule: the steps are also a dependency graph, read off the slots they read and write (the
extension builds it: a step waits for the steps writing what it reads, a conv summing its residual in place also
for the other readers of that residual). An HR module's branches share no data until the fusion, and its output
fusions none with each other, so much of a stage can run at once. With more than one thread the extension may run
the graph on a team of threads, each taking the ready step with the longest path (in measured step times) to the
end, on one thread (oneDNN runs a primitive inside an OpenMP parallel region on the calling thread only, with a
primitive created for one thread), instead of each conv on all threads with a barrier after it. Answers: the same
kernels give the same bits; a conv whose one-thread primitive is another kernel than the all-thread one rounds
differently, within the fp32 rule. The owner's ``parallel_branches`` (what ``convert(parallel_branches=...)``
set) picks the schedule: False serial (as before), True branch-parallel wherever steps can run at once, None
decided per input shape and thread count at the first replayed call by timing both.
``HRNET_FAST_PARALLEL_BRANCHES=0`` (read when steps are listed) keeps every owner serial.
"""
from __future__ import annotations

import functools
import itertools
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..ops import extension
from ..ops.tensor_identity import version

Watch = List[Tuple[dict, tuple]]


class NotReplayable(Exception):
    """The modules as they are cannot be listed as steps (says which and why)."""


class NotReady(Exception):
    """A conv has no kept primitives yet (it has not run eagerly on CPU): listing is tried again next call."""


class Replay:
    """One owner's steps (a handle of the extension's, or None where the modules cannot be replayed as they are)
    and the watch they were listed under. Not part of the module's state: deep copies and pickles start empty."""

    __slots__ = ("program", "watch")

    def __init__(self) -> None:
        self.program = None
        self.watch: Optional[Watch] = None

    def __deepcopy__(self, memo) -> "Replay":
        return Replay()

    def __reduce__(self):
        return Replay, ()


@functools.lru_cache(maxsize=None)
def _entry(name: str) -> Optional[Callable]:
    return getattr(extension.module(), name, None)


def enabled() -> bool:
    """Whether owners list and replay their steps (``HRNET_FAST_NO_REPLAY=1`` says no)."""
    return os.environ.get("HRNET_FAST_NO_REPLAY") != "1"


SERIAL, PARALLEL, AUTOMATIC = 0, 1, 2  # the extension's schedule modes


def parallel_enabled() -> bool:
    """Whether owners may run branches at once (``HRNET_FAST_PARALLEL_BRANCHES=0`` says no)."""
    return os.environ.get("HRNET_FAST_PARALLEL_BRANCHES") != "0"


def mode_of(owner: nn.Module) -> int:
    """The schedule mode for ``owner``'s steps: its ``parallel_branches`` (None automatic), unless switched off."""
    setting = getattr(owner, "parallel_branches", False)
    if not parallel_enabled() or setting is False:
        return SERIAL
    return PARALLEL if setting else AUTOMATIC


def schedule(owner: nn.Module) -> dict:
    """Which schedule ``owner``'s replayed calls run and why: {"schedule": a sentence, "decisions": what the
    automatic mode measured, per (batch, height, width, threads)}."""
    program = owner._replay.program
    setting = getattr(owner, "parallel_branches", False)
    if program is None:
        return {"schedule": "module path (not replayed)", "decisions": []}
    info = _entry("replay_schedule")(program)
    decisions = info["decisions"]
    if info["mode"] == SERIAL or not info["splits"]:
        why = ("serial: HRNET_FAST_PARALLEL_BRANCHES=0" if not parallel_enabled() else
               "serial: parallel_branches=False" if setting is False else
               "serial: no independent steps to run at once")
    elif info["mode"] == PARALLEL:
        why = "branch-parallel: parallel_branches=True (serial wherever one thread runs it)"
    elif not decisions:
        why = "automatic: decided at the first replayed call with 2 or more threads"
    else:
        why = "automatic: " + "; ".join(
            f"{'branch-parallel' if d['parallel'] else 'serial'} at {d['batch']}x{d['height']}x{d['width']} on "
            f"{d['threads']} threads (measured serial {d['serial_ms']:.2f} ms, parallel {d['parallel_ms']:.2f} ms)"
            for d in decisions)
    return {"schedule": why, "decisions": decisions}


def run(owner: nn.Module, inputs: List[torch.Tensor]) -> Optional[List[torch.Tensor]]:
    """The owner's outputs from its steps, or None where the call must take the module path."""
    program = owner._replay.program
    if program is None or torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None:
        return None  # a graph being traced must see the module path's ops
    return _entry("replay_run")(program, owner._replay.watch, inputs)


def refresh(owner: nn.Module, inputs: Sequence[object], as_list: bool = True) -> None:
    """After the owner's module path ran on ``inputs``: list its steps where they are missing or stale.
    ``as_list``: the owner's forward takes the list of tensors (else the one tensor)."""
    state = owner._replay
    if not enabled():
        state.program, state.watch = None, None
        return
    if not inputs or type(inputs[0]) is not torch.Tensor or not inputs[0].is_cpu or \
            torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None or \
            _entry("replay_new") is None:
        return
    if state.watch is not None and _entry("replay_valid")(state.program, state.watch):
        return
    try:
        state.program = Builder(len(inputs), mode_of(owner)).build(owner, as_list)
    except NotReady:
        state.program, state.watch = None, None
        return
    except NotReplayable:
        state.program = None
    state.watch = watch(owner)


def watch(owner: nn.Module) -> Watch:
    """(dict, snapshot of its keys and values) for what the steps depend on: the global hook dicts, and for the
    owner and each module inside it its attributes, children, parameters, buffers and hooks. The watch is a
    Python list on the owner's ``Replay``, not inside the extension's handle, so the garbage collector sees the
    references it holds (the handle holds C++ objects only)."""
    g = nn.modules.module
    dicts = [g._global_forward_hooks, g._global_forward_pre_hooks]
    for m in owner.modules():
        dicts += [m.__dict__, m._modules, m._parameters, m._buffers, m._forward_hooks, m._forward_pre_hooks]
    return [(d, tuple(itertools.chain.from_iterable(d.items()))) for d in dicts]


class Builder:
    """Lists an owner's forward as steps. Modules add theirs through ``emit`` (each converter module's
    ``_emit(builder, slots)`` mirrors its forward), working on slot numbers instead of tensors, in the order the
    module path runs them; ``mode`` is the extension's schedule mode."""

    def __init__(self, inputs: int, mode: int = SERIAL):
        self.inputs = inputs
        self.slots = inputs
        self.mode = mode
        self.steps: List[list] = []

    def build(self, owner: nn.Module, as_list: bool):
        """The extension's handle for ``owner``'s forward on ``self.inputs`` tensors (as a list, or the one)."""
        g = nn.modules.module
        if g._global_forward_hooks or g._global_forward_pre_hooks:
            raise NotReplayable("a global forward hook is registered")
        slots = list(range(self.inputs))
        out = self.emit(owner, slots if as_list else slots[0], owner=True)
        return self.program([out] if isinstance(out, int) else list(out))

    def program(self, outputs: List[int]):
        """The extension's handle for the steps emitted so far, returning the ``outputs`` slots."""
        self._finish(outputs)
        return _entry("replay_new")(self.steps, self.inputs, self.slots, outputs, self.mode)

    def emit(self, m: nn.Module, x, owner: bool = False, **kwargs):
        # Only a class that lists its own steps: a subclass may run a forward of its own.
        if "_emit" not in type(m).__dict__:
            raise NotReplayable(f"{type(m).__name__} does not list its steps")
        if not owner and (m._forward_hooks or m._forward_pre_hooks):
            raise NotReplayable(f"a forward hook is registered on a {type(m).__name__}")
        return m._emit(self, x, **kwargs)

    def conv(self, handle, weight: torch.Tensor, bias: torch.Tensor, relu: bool, x: int,
             residual: Optional[int]) -> int:
        out = self._new()
        self.steps.append(["conv", handle, weight, weight.data_ptr(), version(weight), bias, x,
                           -1 if residual is None else residual, relu, False, out, []])
        return out

    def fuse(self, x: int, low: List[int], same: List[int], mode: str, align_corners: bool) -> int:
        out = self._new()
        self.steps.append(["fuse", x, low, same, mode, align_corners, out, []])
        return out

    def _new(self) -> int:
        self.slots += 1
        return self.slots - 1

    def _finish(self, outputs: List[int]) -> None:
        """Sums each residual in place where no later step reads it (it is neither the caller's tensor nor an
        output: in a parallel run the conv then also waits for the residual's other readers), and drops each slot
        after its last read in the serial order (a parallel run drops it after its last reader, whichever that is)."""
        reads = [self._reads(step) for step in self.steps]
        last_reader: Dict[int, int] = {}
        for i, r in enumerate(reads):
            for slot in r:
                last_reader[slot] = i
        keep = set(outputs)
        for i, step in enumerate(self.steps):
            if step[0] == "conv":
                x, residual = step[6], step[7]
                step[9] = residual >= self.inputs and residual not in keep and residual != x and \
                    last_reader[residual] == i
            step[-1] = sorted(s for s in set(reads[i]) if s not in keep and last_reader[s] == i)
        self.steps = [tuple(step) for step in self.steps]

    @staticmethod
    def _reads(step: list) -> List[int]:
        if step[0] == "conv":
            return [step[6]] + ([step[7]] if step[7] >= 0 else [])
        return [step[1], *step[2], *step[3]]
