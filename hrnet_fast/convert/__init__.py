"""``hrnet_fast.convert(model)``: the same model, with fused kernels, for inference.

    fast = hrnet_fast.convert(model.eval(), dtype=torch.float16)   # model: ours, timm's, official, mmpretrain's
    y = fast(x.half())
    print(fast.fusion_report())

HRNet-structured models are rewritten part by part (``rewrite.py``): the stem, residual blocks (residual add and
ReLU in the last conv's epilogue), transitions, each HR module's fusion (one ``multires_fuse`` per output branch)
and the classification head. Any other traceable CNN gets its conv->BN(->add)(->ReLU) chains fused through
torch.fx (``fx_fuse.py``). What is not fused is listed in the report with the reason.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn

from ..models import check_input_size
from ..ops.backends import BACKENDS, select
from ..ops.library import output_memory_format
from .cuda_graph import GraphCache
from .fused import FUSED_MODULES, FoldedConv, FusedConvBNAct, FusedHRFuse
from .fx_fuse import fuse_graph
from .report import FusionReport
from .rewrite import Rewriter, find_hrnet, rewrite_hrnet

__all__ = ["convert", "ConvertedModel", "FusionReport"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NEUTRAL = (nn.Identity, nn.ReLU, nn.Dropout, nn.Flatten)


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
    """Inference wrapper: validates the input, lays it out, runs the fused model (optionally as CUDA graphs).

    Inference only: it is in eval mode and ``.train()`` raises; the forward runs under ``torch.no_grad()``, so
    outputs never require grad, and the fused ops have no backward. Outputs come in the input's layout (NCHW for
    a contiguous input) unless ``keep_channels_last``. Attributes in ``FORWARDED_ATTRIBUTES`` (``num_classes``,
    ``feature_info``, ``pretrained_cfg`` ...) are the wrapped model's.
    """

    def __init__(self, inner: nn.Module, dtype: torch.dtype, channels_last: bool, in_chans: Optional[int],
                 hrnet: bool, report: FusionReport, cuda_graph: bool, backend: Optional[str] = None,
                 keep_channels_last: bool = False):
        super().__init__()
        self.inner = inner
        self.dtype = dtype
        self.channels_last = channels_last
        self.keep_channels_last = keep_channels_last
        self.backend = backend
        self.in_chans = in_chans
        self.hrnet = hrnet
        self.report = report
        self.graphs = GraphCache(self._run, module=inner) if cuda_graph else None
        super().train(False)

    def fusion_report(self) -> FusionReport:
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
            _check_options(probe.device, self.dtype, self.backend, self.graphs is not None)
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
            self.graphs = GraphCache(self._run, self.graphs, module=self.inner)

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

    def _run(self, x: torch.Tensor) -> Any:
        """The fused model on ``x``, outputs in ``x``'s layout (what CUDA graphs capture)."""
        restore = not self.keep_channels_last and output_memory_format(x) != torch.channels_last
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.inner(x)
        return _contiguous(out) if restore else out

    def forward(self, x: torch.Tensor) -> Any:
        if torch.jit.is_tracing():
            raise RuntimeError(_NO_TORCHSCRIPT)
        self.check_input(x)
        with torch.no_grad():
            if self.graphs is not None and not torch.compiler.is_compiling():
                return self.graphs(x)
            return self._run(x)

    def extra_repr(self) -> str:
        return (f"dtype={self.dtype}, channels_last={self.channels_last}, "
                f"keep_channels_last={self.keep_channels_last}, cuda_graph={self.graphs is not None}")


def _first_conv_in_chans(module: nn.Module) -> Optional[int]:
    """Input channels of the conv that reads the model's input (the first conv in graph/module order)."""
    if isinstance(module, fx.GraphModule):
        for node in module.graph.nodes:
            if node.op == "call_module":
                m = module.get_submodule(node.target)
                w = getattr(m, "weight", None)
                if isinstance(m, (nn.Conv2d, FusedConvBNAct, FoldedConv)) and w is not None:
                    return (m.conv.in_channels if isinstance(m, FoldedConv) else w.shape[1])
                return None
        return None
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
        if isinstance(m, FusedConvBNAct):
            return m.weight.shape[1]
    return None


def _report_leftovers(module: nn.Module, report: FusionReport) -> None:
    """Lists leaf modules the rewrite did not absorb (a conv or BN here is a missed fusion)."""
    def walk(m: nn.Module, path: str) -> None:
        if isinstance(m, FUSED_MODULES) or isinstance(m, _NEUTRAL):
            return
        children = list(m.named_children())
        if not children:
            kind = type(m).__name__
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                report.skip(path, kind, "not in a conv->BN(->ReLU) pattern the converter recognises")
            else:
                report.skip(path, kind, "no fused op for this layer; runs as is")
        for name, child in children:
            walk(child, f"{path}.{name}" if path else name)
    walk(module, "")


def _check_options(device: torch.device, dtype: torch.dtype, backend: Optional[str], cuda_graph: bool) -> None:
    """Raises for options a model on ``device`` cannot run with, before anything is converted or moved."""
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} or None")
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a model on a CUDA device; this one is on {device}")
    for op in ("conv_bn_act", "multires_fuse"):
        select(op, device, backend)  # an unavailable explicit backend fails here, not mid-forward


def _reconvert(model: ConvertedModel, dtype: Optional[torch.dtype], backend: Optional[str],
               channels_last: Optional[bool], cuda_graph: bool, keep_channels_last: bool,
               inplace: bool) -> ConvertedModel:
    """``convert`` of a converted model: the same model with the new run options. The dtype cannot change (BN
    was folded for it); a new backend is set on every fused module."""
    if dtype is not None and dtype != model.dtype:
        raise TypeError(f"this model was already converted for {model.dtype}; convert the original model for "
                        f"{dtype} instead: hrnet_fast.convert(model, dtype={dtype})")
    _check_options(model.device, model.dtype, backend, cuda_graph)
    target = model if inplace else copy.deepcopy(model)
    if backend is not None:
        target.backend = backend
        for m in target.modules():
            if hasattr(m, "requested_backend"):
                m.requested_backend = backend
            if isinstance(m, FusedConvBNAct):
                m._prepared.clear()  # a form prepared for the old backend (kept oneDNN primitives) would still run
    if channels_last is not None:
        target.channels_last = channels_last
        _store_weights(target.inner, channels_last)
    target.keep_channels_last = keep_channels_last
    if cuda_graph != (target.graphs is not None):
        target.graphs = GraphCache(target._run, module=target.inner) if cuda_graph else None
    return target


def _store_weights(inner: nn.Module, channels_last: bool) -> None:
    """Stores every conv weight once in the activations' layout, the one the backends read without a copy."""
    for m in inner.modules():
        if isinstance(m, (FusedConvBNAct, FoldedConv)):
            m.set_activation_layout(channels_last)


def _device_of(model: nn.Module) -> torch.device:
    """The one device holding the model's tensors; ValueError for none, several, or the meta device."""
    tensors = list(model.parameters()) + list(model.buffers())
    if not tensors:
        raise ValueError("the model has no parameters to convert")
    device = tensors[0].device
    if any(t.device != device for t in tensors):
        raise ValueError("the model's parameters are on several devices; move it to one device first")
    if device.type == "meta":
        raise ValueError("the model is on the meta device (shapes without values), so there are no weights to fold: "
                         "give it weights first (load_checkpoint(model, ...) after model.to_empty(device='cpu'), or "
                         "model.load_state_dict(state_dict, assign=True)), then convert()")
    return device


def convert(model: nn.Module, *, dtype: Optional[torch.dtype] = None, backend: Optional[str] = None,
            channels_last: Optional[bool] = None, cuda_graph: bool = False, inplace: bool = False,
            keep_channels_last: bool = False) -> ConvertedModel:
    """Returns an inference module with the same outputs as ``model``, running fused kernels.

    Args:
        model: an HRNet (hrnet_fast, timm, official repo, mmpretrain) or any CNN, in eval mode. A model
            ``convert`` returned comes back with the new run options (its dtype cannot change).
        dtype: run dtype (float32, float16, bfloat16); default: the model's. BN is folded in fp32, then cast.
        backend: "torch", "triton", "cuda", "cpu", or None for the fastest live one per op on the model's device.
        channels_last: lay activations out NHWC; default True (what oneDNN and tensor cores prefer).
        cuda_graph: replay CUDA graphs, one per input shape (CUDA models only; see ``cuda_graph.py``).
        inplace: rewrite ``model`` itself instead of a copy (saves memory; ``model`` is consumed).
        keep_channels_last: return feature maps as the fused kernels wrote them (channels_last) instead of in the
            input's layout, saving one copy per output feature map.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() takes an nn.Module, got {type(model).__name__}")
    if isinstance(model, ConvertedModel):
        return _reconvert(model, dtype, backend, channels_last, cuda_graph, keep_channels_last, inplace)
    if model.training:
        raise RuntimeError("convert() folds BatchNorm running statistics, so the model must be in eval mode: "
                           "call model.eval() first")
    device = _device_of(model)
    if dtype is None:
        dtype = next((t.dtype for t in model.state_dict().values() if t.is_floating_point()), torch.float32)
    _check_options(device, dtype, backend, cuda_graph)

    target = model if inplace else copy.deepcopy(model)
    report = FusionReport()
    with torch.no_grad():
        rewritten = rewrite_hrnet(target, dtype, backend, report)
        hrnet = rewritten is not None
        inner: nn.Module = rewritten if hrnet else target
        if not hrnet:
            try:
                inner = fuse_graph(target, dtype, backend, report)
            except Exception as e:  # not traceable: fuse what module structure alone makes safe
                report.skip("", "torch.fx trace", f"{type(e).__name__}: {e}; only Sequential and block patterns "
                                                  f"were fused")
                Rewriter(dtype, backend, report).children("", target)
    inner.to(dtype).eval().requires_grad_(False)
    channels_last = True if channels_last is None else channels_last
    _store_weights(inner, channels_last)
    _report_leftovers(inner, report)
    net = find_hrnet(inner)[1]
    in_chans = _first_conv_in_chans(net if net is not None else inner)
    # HRNets that upsample by nearest neighbour take only sizes whose branches halve exactly; bilinear (segmentation)
    # ones take any size.
    nearest = hrnet and any(getattr(m, "mode", None) == "nearest" for m in inner.modules()
                            if isinstance(m, (FusedHRFuse, nn.Upsample)))
    return ConvertedModel(inner, dtype, channels_last, in_chans, nearest, report, cuda_graph, backend,
                          keep_channels_last)
