"""The implementations the 'measure' stage times side by side, each built from the calibrated reference model.

Each builder takes (model, dtype, x) -- the fp32 reference model on the device, the run dtype, the cell's fp32
input -- and returns a zero-argument callable running one forward on an input prepared beforehand (cast, laid
out). Whatever is lazy (cuDNN's algorithm search, Triton's compile and tuning, a graph capture, torch.compile)
happens in the first call, which the stage times as ``first_call_s``.

    eager_nchw                 the reference in the run dtype, NCHW: what a user runs first
    eager_channels_last        channels_last, torch.backends.cudnn.benchmark=True during its calls
    eager_cuda_graph           eager NCHW captured in one CUDA graph (input copied in per call, as convert's does)
    compile_max_autotune       torch.compile(mode="max-autotune"): its first call is capped (``COMPILE_CAP_S``)
    converted_cuda             hrnet_fast.convert(backend="cuda", cuda_graph=False): the cuDNN/CUDA path
    converted_cuda_graph       the same replayed from CUDA graphs
    converted_cuda_graph_parallel  the same graph, each HR module's branches captured on streams of their own
                               (parallel_branches=True): beside converted_cuda_graph, what decides the GPU default
    converted_triton_graph     convert(backend="triton", cuda_graph=True)

``cuda_graph`` is passed explicitly: its default is not what is being measured. Smoke mode (CPU): the cpu backend
stands in for cuda, torch.compile uses its "eager" backend (Inductor's autotuning would take minutes on 2 cores),
and what needs a CUDA device is recorded as skipped.
"""
from __future__ import annotations

import copy
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

import hrnet_fast

Forward = Callable[[], object]


class CapExceeded(BaseException):
    """A first call passed its cap. A BaseException, so Inductor's per-choice ``except Exception`` in its
    autotuning does not swallow it."""


@contextmanager
def time_cap(seconds: float):
    """Raises CapExceeded in the main thread after ``seconds`` (SIGALRM; torch.compile is Python code, so the
    exception lands between two of its steps)."""
    def expire(signum, frame):
        raise CapExceeded(f"its first call passed its {seconds:.0f} s cap")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _eager(model: nn.Module, dtype: torch.dtype, memory_format: torch.memory_format) -> nn.Module:
    return copy.deepcopy(model).to(dtype=dtype, memory_format=memory_format).eval()


def eager_nchw(model, dtype, x) -> Forward:
    m, xd = _eager(model, dtype, torch.contiguous_format), x.to(dtype)
    return lambda: m(xd)


def eager_channels_last(model, dtype, x) -> Forward:
    m = _eager(model, dtype, torch.channels_last)
    xd = x.to(dtype).contiguous(memory_format=torch.channels_last)
    cudnn = torch.backends.cudnn

    def forward():
        # benchmark=True for this implementation's calls only: the others run under the default flags.
        with cudnn.flags(enabled=cudnn.enabled, benchmark=True, deterministic=cudnn.deterministic,
                         allow_tf32=cudnn.allow_tf32):
            return m(xd)
    return forward


def eager_cuda_graph(model, dtype, x) -> Forward:
    m, xd = _eager(model, dtype, torch.contiguous_format), x.to(dtype)
    static_x = torch.empty_like(xd)
    state = {}

    def capture():
        static_x.copy_(xd)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(2):
                m(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            state["out"] = m(static_x)
        state["graph"] = graph

    def forward():
        if "graph" not in state:
            capture()
        static_x.copy_(xd)
        state["graph"].replay()
        return state["out"]
    return forward


@dataclass
class CompileOptions:
    mode: Optional[str]
    backend: str

    def compile(self, m: nn.Module) -> nn.Module:
        if self.mode is None:
            return torch.compile(m, backend=self.backend, dynamic=False)
        return torch.compile(m, mode=self.mode, backend=self.backend, dynamic=False)


def compiled(options: CompileOptions, cap_s: float):
    def build(model, dtype, x) -> Forward:
        torch._dynamo.reset()  # a fresh compile per cell: dynamic=False, no recompiles against another cell's
        m, xd = options.compile(_eager(model, dtype, torch.contiguous_format)), x.to(dtype)
        state = {"first": True}

        def forward():
            if state["first"]:
                state["first"] = False
                try:
                    with time_cap(cap_s):
                        return m(xd)
                except CapExceeded:
                    _stop_compile_workers()
                    raise
            return m(xd)
        return forward
    return build


def _stop_compile_workers() -> None:
    """Inductor's compile workers keep going after an interrupted compile; stop them so they do not load the CPU
    while the other implementations are timed."""
    try:
        from torch._inductor.async_compile import shutdown_compile_workers
        shutdown_compile_workers()
    except Exception:  # an older or newer torch without it: the workers idle out on their own
        pass


def converted(backend: str, cuda_graph: bool, parallel_branches: Optional[bool] = None):
    """parallel_branches=True: each HR module's branches captured on streams of their own (branch_streams.py)."""
    def build(model, dtype, x) -> Forward:
        fast = hrnet_fast.convert(model, dtype=dtype, backend=backend, cuda_graph=cuda_graph,
                                  parallel_branches=parallel_branches)
        xd = x.to(dtype)
        return lambda: fast(xd)
    return build
