"""Replaying a converted model as CUDA graphs: one capture per input shape, then one launch per call.

At batch 1 an HRNet forward is ~300 fused kernels of a few microseconds each; the GPU waits on launches, and the
Python that issues them costs as much as the kernels. A CUDA graph turns them into one launch. Rules (documented in
docs/convert.md, "CUDA graphs"):
  - a graph is captured the first time a (shape, dtype, memory format, device) is seen, after two warm-up runs
    (they make every choice a capture must not make: Triton tuning and module loading, cuDNN's fused-engine
    decisions, allocator growth), and kept in a bounded LRU cache (``max_graphs``, default 8; the least recently
    used is dropped);
  - with ``bucket_batches`` (HRNets, whose outputs are computed per image) the batch is rounded up to a power of
    two (``batch_bucket``): a graph for batch 8 serves batches 5 to 8, the input copied into its first rows and
    the outputs' first rows returned, so a server with varying batch sizes keeps a handful of graphs. The rows
    past the batch hold the zeros of the capture or an earlier call's images; no output row depends on another
    image. Batch 0 runs without a graph;
  - warm-up, capture and replay run on the input's device: capture on a side stream of that device (one per
    device), in thread-local capture mode, so CUDA calls other threads make meanwhile (a DataLoader's pin-memory
    thread) neither fail nor break the capture;
  - a graph holds raw pointers to the model's tensors, so every call compares their signature (data pointer,
    version counter, device, dtype) with the one the graphs were captured under and drops every graph when it
    differs: after ``.to()``, ``.half()``, ``load_state_dict`` (in place, or with ``assign=True``) the next call
    captures again instead of replaying freed or stale memory;
  - each call copies the input into the graph's static input and replays it;
  - outputs are cloned out of the graph's static memory before returning, so a later call never overwrites a
    tensor the caller holds.
"""
from __future__ import annotations

from collections import OrderedDict
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..ops import extension
from ..ops.tensor_identity import signature as tensor_signature_of


def _clone(out: Any, rows: Optional[int] = None) -> Any:
    """A copy of ``out`` (a tensor or a list/tuple of them), of each tensor's first ``rows`` rows when given."""
    if isinstance(out, torch.Tensor):
        return (out if rows is None else out[:rows]).clone()
    return type(out)(_clone(o, rows) for o in out)


def _leading_sizes(out: Any) -> List[int]:
    if isinstance(out, torch.Tensor):
        return [out.shape[0] if out.dim() else -1]
    return [n for o in out for n in _leading_sizes(o)]


def batch_bucket(n: int) -> int:
    """The batch a graph is captured for when batches are bucketed: ``n`` rounded up to a power of two."""
    return 1 << max(n - 1, 0).bit_length()


def tensor_dicts(module: nn.Module) -> List[Dict[str, Any]]:
    """The ``_parameters`` and ``_buffers`` dicts of ``module`` and its submodules: the live containers that
    ``.to()`` and ``load_state_dict(assign=True)`` write new tensors into."""
    return [d for m in module.modules() for d in (m._parameters, m._buffers) if d]


def signature(dicts: List[Dict[str, Any]]) -> Any:
    """What identifies the tensors in ``dicts`` for a graph holding their pointers (``tensor_identity.signature`` of each;
    the compiled extension computes the same, packed, ~75x faster: 11 us for HRNet-W18)."""
    native = getattr(extension.module(), "tensor_signature", None)
    if native is not None:
        return native(dicts)
    return tuple(None if t is None else tensor_signature_of(t) for d in dicts for t in d.values())


_side_streams: Dict[torch.device, torch.cuda.Stream] = {}


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream graphs on ``device`` are warmed up and captured on (capture cannot use the default stream)."""
    stream = _side_streams.get(device)
    if stream is None:
        stream = _side_streams[device] = torch.cuda.Stream(device=device)
    return stream


class GraphCache:
    """CUDA graphs of ``fn`` (the forward of ``module``), one per input key; see the module docstring.

    ``module`` is the module whose tensors ``fn`` reads (their signature decides when graphs are dropped).
    ``bucket_batches``: capture for the batch rounded up to a power of two (``fn`` must compute each output row
    from its own input row only, and return tensors whose first dimension is the batch; a capture whose outputs
    do not lead with the batch turns bucketing off for this cache, with a warning).
    Public surface: ``__call__(x)``, ``len()``, ``clear()`` (drop every graph, e.g. to free their memory at once,
    or after replacing submodules of ``module``).
    """

    def __init__(self, fn: Callable[[torch.Tensor], Any], max_graphs: int = 8, *, module: nn.Module,
                 bucket_batches: bool = False):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}")
        self.fn = fn
        self.module = module
        self.max_graphs = max_graphs
        self.bucket_batches = bucket_batches
        self._graphs: "OrderedDict[Tuple, Tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]]" = OrderedDict()
        self._dicts = tensor_dicts(module)
        self._signature: Any = None

    def key(self, x: torch.Tensor, args: Tuple = (), kwargs: Optional[Dict[str, Any]] = None) -> Tuple:
        """What a graph is captured for: the input's (bucketed) shape, dtype, layout and device, and the further
        arguments of the forward (constants, see ``takes``)."""
        fmt = "cl" if x.is_contiguous(memory_format=torch.channels_last) else "nchw"
        shape = tuple(x.shape)
        if self.bucket_batches:
            shape = (batch_bucket(shape[0]),) + shape[1:]
        return shape, x.dtype, fmt, x.device, tuple(args), tuple(sorted((kwargs or {}).items()))

    @staticmethod
    def takes(args: Tuple, kwargs: Dict[str, Any]) -> bool:
        """Whether a forward with these further arguments can be replayed: each is a constant (None, a bool, int,
        float or str, as an mmpose estimator's ``data_samples=None, mode="tensor"``), which a graph captures as it
        captures the weights; a tensor or a list of samples would be read at capture only."""
        return all(v is None or isinstance(v, (bool, int, float, str)) for v in (*args, *kwargs.values()))

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        self._graphs.clear()
        self._dicts = tensor_dicts(self.module)
        self._signature = None

    def _static_input(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """The graph's input buffer: ``x`` itself copied, or zeros of ``batch`` rows in x's layout with x in front."""
        if batch == x.shape[0]:
            return x.clone()
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        static_in = torch.empty((batch,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=fmt)
        static_in.zero_()
        static_in[:x.shape[0]].copy_(x)
        return static_in

    def _capture(self, x: torch.Tensor, batch: int, fn: Callable[[torch.Tensor], Any]
                 ) -> Tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]:
        """Warm-up runs then a capture of ``fn`` on a ``batch``-row input, on ``x``'s device (current within the
        caller's guard)."""
        static_in = self._static_input(x, batch)
        stream = side_stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: Triton tuning and module loads, cuDNN decisions, allocator, lazy init
                fn(static_in)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            static_out = fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        return graph, static_in, static_out

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """``fn(x, *args, **kwargs)`` replayed from a graph; the further arguments are constants (``takes``)."""
        fn = (lambda t: self.fn(t, *args, **kwargs)) if args or kwargs else self.fn
        if x.shape[0] == 0:  # nothing to launch: a graph would only hold memory
            return fn(x)
        sig = signature(self._dicts)
        if sig != self._signature:  # the model's tensors moved or changed since the graphs were captured
            self._graphs.clear()
            self._signature = sig
        k = self.key(x, args, kwargs)
        with torch.cuda.device(x.device):
            entry = self._graphs.get(k)
            if entry is None:
                entry = self._capture(x, k[0][0], fn)
                if self.bucket_batches and any(n != k[0][0] for n in _leading_sizes(entry[2])):
                    warnings.warn("hrnet_fast: this model's outputs do not all lead with the batch dimension, so its "
                                  "CUDA graphs are captured per exact batch size", RuntimeWarning, stacklevel=3)
                    self.bucket_batches = False
                    self._graphs.clear()
                    return self(x, *args, **kwargs)
                self._graphs[k] = entry
                if len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(k)
            graph, static_in, static_out = entry
            n = x.shape[0]
            if n == static_in.shape[0]:
                static_in.copy_(x)
                graph.replay()
                return _clone(static_out)
            static_in[:n].copy_(x)
            graph.replay()
            return _clone(static_out, n)
