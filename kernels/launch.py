"""Launch plans: a Triton kernel launched straight through its compiled launcher, everything that depends only on
the call's shapes decided once.

``kernel[grid](*args)`` binds every argument, specialises it (dtype, 16-byte alignment, divisibility by 16),
hashes the result to find the compiled variant and builds launch metadata: ~27 us of Python per launch, more than
most of HRNet's kernels take on the GPU. A launcher keys a ``LaunchPlan`` by what decides all of that (shapes,
strides, dtype, device, pointer alignment, flags), so a later call with the same key looks the plan up and calls
the compiled kernel's launcher with the call's tensors; the scalars and constexprs come from the plan.

A plan is made by one ordinary launch (``make``), which compiles the variant if needed and loads it on the device.
So a CUDA graph captured after one ordinary call per key (a warm-up) launches only kernels already loaded; making a
plan while a graph is being captured raises ``tuning.NotWarmedUp`` instead of failing inside the capture.

Plans serve compiled kernels only: under the Triton interpreter launchers keep the ordinary ``kernel[grid]``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple

from triton import knobs
from triton.knobs import HookChain


def stream_getter() -> Callable[[Any], int]:
    """The function giving a device's current stream, as Triton's own launch reads it."""
    from triton.runtime.driver import driver
    return driver.active.get_current_stream


_runtime = knobs.runtime  # the hooks are read from it at every launch, as Triton reads them


class LaunchPlan:
    """One compiled, loaded kernel variant with its grid and non-tensor arguments fixed. ``plan(*tensors)`` launches
    it on the current stream of its device with ``tensors`` as the leading (pointer) arguments."""

    __slots__ = ("compiled", "launcher", "function", "packed_metadata", "grid", "grid_dims", "tail", "device_index",
                 "stream_of")

    def __init__(self, compiled, grid: Tuple[int, ...], tail: Tuple, device_index, stream_of: Callable[[Any], int]):
        self.compiled = compiled
        self.launcher = compiled.run  # loads the module on the device (the property's first read)
        self.function = compiled.function
        self.packed_metadata = compiled.packed_metadata
        self.grid = grid
        self.grid_dims = (tuple(grid) + (1, 1))[:3]
        self.tail = tuple(tail)
        self.device_index = device_index
        self.stream_of = stream_of

    def __call__(self, *tensors) -> None:
        stream = self.stream_of(self.device_index)
        args = tensors + self.tail
        enter = _runtime.launch_enter_hook
        # Triton computes the metadata for the hooks only; with no hook registered it is never read.
        metadata = None if enter is None or (type(enter) is HookChain and not enter.calls) else \
            self.compiled.launch_metadata(self.grid, stream, *args)
        g0, g1, g2 = self.grid_dims
        self.launcher(g0, g1, g2, stream, self.function, self.packed_metadata, metadata, enter,
                      _runtime.launch_exit_hook, *args)


def bound_values(jit_fn, args: Sequence, kwargs: dict) -> Tuple:
    """The kernel's arguments in signature order, constexprs included (what Triton's launcher is handed)."""
    names = [p.name for p in jit_fn.params]
    return tuple(args) + tuple(kwargs[name] for name in names[len(args):])


def make(jit_fn, grid: Tuple[int, ...], args: Sequence, kwargs: dict, n_tensors: int, device) -> LaunchPlan:
    """Launches ``jit_fn[grid](*args, **kwargs)`` the ordinary way and returns the plan that repeats it: the
    first ``n_tensors`` arguments are the tensors each call passes; ``kwargs`` holds the constexprs and the
    compile options (num_warps, num_stages). ``device`` is the tensors' device."""
    compiled = jit_fn.run(*args, grid=grid, warmup=False, **kwargs)
    tail = bound_values(jit_fn, args, kwargs)[n_tensors:]
    return LaunchPlan(compiled, grid, tail, device.index, stream_getter())
