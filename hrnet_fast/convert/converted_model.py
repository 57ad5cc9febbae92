"""``ConvertedModel``: what ``convert()`` returns — the fused model behind input checks, the input's layout, and
(on CUDA) CUDA-graph replay.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from ..models import check_input_size
from ..ops.backends import BACKENDS, select
from ..ops.checks import output_memory_format
from . import replay
from .cuda_graph import GraphCache
from .padding import ChannelPadding
from .report import FusionReport

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# Attributes of the wrapped model that timm, mmpose and detectron-style code read from a model.
FORWARDED_ATTRIBUTES = ("num_classes", "num_features", "feature_info", "pretrained_cfg", "default_cfg",
                        "features_only", "out_indices")
_NO_TORCHSCRIPT = ("TorchScript cannot compile or trace a converted model (its fused ops dispatch in Python). "
                   "Use torch.export.export(converted, (x,)) for a serialisable graph, or "
                   "torch.onnx.export(converted, (x,), dynamo=True) for ONNX.")


def _contiguous(out: Any) -> Any:
    """``out`` (a tensor, or a list/tuple/dict of them) with every tensor in the default (NCHW) layout."""
    if isinstance(out, torch.Tensor):
        return out.contiguous()
    if isinstance(out, dict):
        return {k: _contiguous(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_contiguous(o) for o in out)
    return out


class ConvertedModel(nn.Module):
    """Inference wrapper: validates the input, lays it out, runs the fused model (on CUDA as CUDA graphs).

    Inference only: it is in eval mode and ``.train()`` raises; the forward runs under ``torch.no_grad()``, so
    outputs never require grad, and the fused ops have no backward. Outputs come in the input's layout (NCHW for
    a contiguous input) unless ``keep_channels_last``. Attributes in ``FORWARDED_ATTRIBUTES`` (``num_classes``,
    ``feature_info``, ``pretrained_cfg`` ...) are the wrapped model's.

    ``cuda_graph``: None replays CUDA graphs whenever the input is on a CUDA device (the default: without graphs a
    converted forward on GPU waits on Python and launches, and is no faster than eager); True always (CUDA only);
    False never. ``batch_independent``: each output row depends on its own input row only (HRNets), so graphs
    are captured per batch rounded up to a power of two.
    """

    def __init__(self, inner: nn.Module, dtype: torch.dtype, channels_last: bool, in_chans: Optional[int],
                 hrnet: bool, report: FusionReport, cuda_graph: Optional[bool], backend: Optional[str] = None,
                 keep_channels_last: bool = False, batch_independent: bool = False,
                 padding: Optional[ChannelPadding] = None):
        super().__init__()
        self.padding = padding if padding is not None else ChannelPadding()  # what convert() padded
        self.inner = inner
        self.dtype = dtype
        self.channels_last = channels_last
        self.keep_channels_last = keep_channels_last
        self.backend = backend
        self.in_chans = in_chans
        self.hrnet = hrnet
        self.report = report
        self.batch_independent = batch_independent
        self._warned_arguments = False  # a call with non-constant further arguments ran without graphs (forward)
        self.set_cuda_graph(cuda_graph)
        super().train(False)

    def set_cuda_graph(self, cuda_graph: Optional[bool]) -> None:
        """Sets the CUDA-graph mode (see the class docstring); graphs captured so far are dropped."""
        self.cuda_graph = cuda_graph
        self.graphs = None if cuda_graph is False else GraphCache(self._run, module=self.inner,
                                                                   bucket_batches=self.batch_independent)

    def set_parallel_branches(self, parallel_branches: Optional[bool]) -> None:
        """The branch schedule (``convert``'s ``parallel_branches``) on every replayed owner; their steps are
        listed again at their next call."""
        self.parallel_branches = parallel_branches
        for m in self.inner.modules():
            if hasattr(m, "parallel_branches"):
                m.parallel_branches = parallel_branches

    def schedules(self) -> Dict[str, dict]:
        """Per replayed owner not inside another (module path -> ``replay.schedule``): which schedule its calls
        run and why."""
        owners = [(name, m) for name, m in self.inner.named_modules() if hasattr(m, "parallel_branches")]
        inner = {id(c) for _, m in owners for c in m.modules() if c is not m}
        return {name: replay.schedule(m) for name, m in owners if id(m) not in inner}

    def fusion_report(self) -> FusionReport:
        self.report.schedule = [f"{path}: {s['schedule']}" for path, s in self.schedules().items()]
        return self.report

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name not in FORWARDED_ATTRIBUTES:
                raise
        return getattr(super().__getattr__("inner"), name)

    def train(self, mode: bool = True) -> "ConvertedModel":
        if mode:
            raise RuntimeError("a converted model is inference-only (BatchNorm is folded into its convolutions and "
                               "the fused ops have no backward): train the original model, then convert() it again")
        return super().train(False)

    def _apply(self, fn, recurse=True):
        """``.to()``, ``.cuda()``, ``.half()`` ...: a device move works (packed weights and CUDA graphs are
        rebuilt); a dtype change raises before anything moves, since BN was folded for ``self.dtype``."""
        probe = fn(torch.empty(0, dtype=self.dtype, device=self.device))
        if probe.dtype != self.dtype:
            raise TypeError(f"this model was converted for {self.dtype} (BatchNorm folded in fp32, then cast), so it "
                            f"does not change dtype; convert the original model for {probe.dtype}: "
                            f"hrnet_fast.convert(model, dtype={probe.dtype})")
        moved = probe.device != self.device
        if moved:
            check_options(probe.device, self.dtype, self.backend, self.cuda_graph is True)
        out = super()._apply(fn, recurse)
        if moved and self.graphs is not None:
            self.graphs.clear()  # graphs hold the old device's memory: free it now rather than at the next call
        return out

    def __getstate__(self):
        # CUDA graphs neither pickle nor deep-copy; a copy captures its own on first use.
        state = dict(self.__dict__)
        if state.get("graphs") is not None:
            state["graphs"] = self.graphs.max_graphs
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if isinstance(self.graphs, int):
            self.graphs = GraphCache(self._run, self.graphs, module=self.inner,
                                     bucket_batches=self.batch_independent)

    def __prepare_scriptable__(self):  # torch.jit.script calls this hook first
        raise RuntimeError(_NO_TORCHSCRIPT)

    @property
    def device(self) -> torch.device:
        t = next(iter(self.inner.buffers()), None)
        if t is None:
            t = next(self.inner.parameters())
        return t.device

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D (N, C, H, W) image batch, got shape {tuple(x.shape)}")
        if self.in_chans is not None and x.shape[1] != self.in_chans:
            raise ValueError(f"the model takes {self.in_chans} input channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        if x.dtype != self.dtype:
            remedy = f"cast the input (x.to({self.dtype}))"
            if x.dtype in _DTYPES:  # only a dtype convert() accepts is worth converting for
                remedy += f" or convert with dtype={x.dtype}"
            raise TypeError(f"the model was converted for {self.dtype} inputs, got {x.dtype}; {remedy}")
        if x.device != self.device:
            raise ValueError(f"the model is on {self.device} but the input is on {x.device}")
        if self.hrnet:
            check_input_size(x.shape[-2], x.shape[-1])
        elif x.shape[-2] < 1 or x.shape[-1] < 1:
            raise ValueError(f"the model cannot take a {x.shape[-2]}x{x.shape[-1]} input: height and width must be "
                             f"at least 1")

    def _run(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The fused model on ``x`` (and any further arguments of its forward), outputs in ``x``'s layout (what CUDA
        graphs capture)."""
        restore = not self.keep_channels_last and output_memory_format(x) != torch.channels_last
        if self.channels_last and not self.padding.pads_image:  # a padding stem lays the image out as it pads it
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.padding.slice_outputs(self.inner(x, *args, **kwargs), dense=not restore)
        return _contiguous(out) if restore else out

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The model's outputs on the image batch ``x``. Further arguments go to the wrapped model's forward as
        given (an mmpose estimator's ``data_samples`` and ``mode``: ``fast(x, None)`` is its tensor mode). On CUDA
        a call whose further arguments are constants replays a graph captured for them; other arguments (tensors,
        lists of samples) run without graphs, with a warning the first time."""
        if torch.jit.is_tracing():
            raise RuntimeError(_NO_TORCHSCRIPT)
        self.check_input(x)
        with torch.no_grad():
            if self.graphs is not None and x.is_cuda and not torch.compiler.is_compiling():
                if GraphCache.takes(args, kwargs):
                    return self.graphs(x, *args, **kwargs)
                if not self._warned_arguments:
                    self._warned_arguments = True
                    warnings.warn("hrnet_fast: a converted model called with arguments besides the image batch that "
                                  "are not constants (None, bool, int, float, str) runs without CUDA graphs",
                                  RuntimeWarning, stacklevel=2)
            return self._run(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"dtype={self.dtype}, channels_last={self.channels_last}, "
                f"keep_channels_last={self.keep_channels_last}, cuda_graph={'auto' if self.cuda_graph is None else self.cuda_graph}"
                + self.padding.repr_suffix())


def check_options(device: torch.device, dtype: torch.dtype, backend: Optional[str], cuda_graph: bool) -> None:
    """Raises for options a model on ``device`` cannot run with, before anything is converted or moved."""
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} or None")
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a model on a CUDA device; this one is on {device}")
    for op in ("conv_bn_act", "multires_fuse"):
        select(op, device, backend)  # an unavailable explicit backend fails here, not mid-forward
