"""``hrnet_fast.convert(model)``: the same model, with fused kernels, for inference.

    fast = hrnet_fast.convert(model.eval(), dtype=torch.float16)   # model: ours, timm's, official, mmpretrain's
    y = fast(x.half())
    print(fast.fusion_report())

HRNet-structured models are rewritten part by part (``rewrite.py``): the stem, residual blocks (residual add and
ReLU in the last conv's epilogue), transitions, each HR module's fusion (one ``multires_fuse`` per output branch)
and the classification head. Any other traceable CNN gets its conv->BN(->add)(->ReLU) chains fused through
torch.fx (``fx_fuse.py``); one that is not traceable as a whole gets the structural rules, then each module the
most complete way that is safe for it (``walk.py``). What is not fused is listed in the report with the reason.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn

from ..ops.folding import bn_not_foldable, is_batchnorm
from .converted_model import FORWARDED_ATTRIBUTES, ConvertedModel, check_options
from .fused import FUSED_MODULES, FoldedConv, FusedConvBNAct, FusedHRFuse
from .fx_fuse import fuse_graph
from .padding import check_pad_channels, default_multiple, pad_model
from .report import FusionReport
from .rewrite import find_hrnet, rewrite_hrnet
from .rewriter import Rewriter
from .walk import error_line, fuse_rest

__all__ = ["convert", "ConvertedModel", "FORWARDED_ATTRIBUTES", "FusionReport"]

_NEUTRAL = (nn.Identity, nn.ReLU, nn.Dropout, nn.Flatten)


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
    """Lists leaf modules the rewrite did not absorb (a conv or BN here is a missed fusion). Inside a fused module
    only BNs are listed: a fused module keeps no BN it folded, while its plain convs may hold folded weights."""
    def walk(m: nn.Module, path: str, in_fused: bool) -> None:
        if isinstance(m, _NEUTRAL):
            return
        in_fused = in_fused or isinstance(m, FUSED_MODULES)
        children = list(m.named_children())
        if not children:
            kind = type(m).__name__
            if is_batchnorm(m):  # the reason it was not folded: its mode or statistics, else where it sits
                report.skip(path, kind, bn_not_foldable(m) or "not after a conv in a pattern the converter recognises")
            elif not in_fused:  # a fused module's other leaves are what it runs
                report.skip(path, kind, "not in a conv->BN(->ReLU) pattern the converter recognises"
                            if isinstance(m, nn.Conv2d) else "no fused op for this layer; runs as is")
        for name, child in children:
            walk(child, f"{path}.{name}" if path else name, in_fused)
    walk(module, "", False)


def _reconvert(model: ConvertedModel, dtype: Optional[torch.dtype], backend: Optional[str],
               channels_last: Optional[bool], cuda_graph: Optional[bool], keep_channels_last: bool,
               inplace: bool, pad_channels: Optional[int] = None,
               parallel_branches: Optional[bool] = None) -> ConvertedModel:
    """``convert`` of a converted model: the same model with the new run options. The dtype and the channel
    padding cannot change (BN was folded for the one, the weights are padded for the other); a new backend is set
    on every fused module."""
    if dtype is not None and dtype != model.dtype:
        raise TypeError(f"this model was already converted for {model.dtype}; convert the original model for "
                        f"{dtype} instead: hrnet_fast.convert(model, dtype={dtype})")
    if pad_channels is not None and pad_channels != model.padding.multiple:
        raise ValueError(f"this model was already converted with pad_channels={model.padding.multiple} (its weights "
                         f"are padded for it); convert the original model instead: "
                         f"hrnet_fast.convert(model, pad_channels={pad_channels})")
    check_options(model.device, model.dtype, backend, cuda_graph is True)
    target = model if inplace else copy.deepcopy(model)
    if backend is not None:
        target.backend = backend
        for m in target.modules():
            if hasattr(m, "requested_backend"):
                m.requested_backend = backend
            if isinstance(m, (FusedConvBNAct, FoldedConv)):
                m._prepared.clear()  # a form prepared for the old backend (kept oneDNN primitives) would still run
    if channels_last is not None:
        target.channels_last = channels_last
        _store_weights(target.inner, channels_last)
    target.keep_channels_last = keep_channels_last
    if cuda_graph is not None and cuda_graph != target.cuda_graph:
        target.set_cuda_graph(cuda_graph)
    if parallel_branches is not None:
        target.set_parallel_branches(parallel_branches)
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
            channels_last: Optional[bool] = None, cuda_graph: Optional[bool] = None, inplace: bool = False,
            keep_channels_last: bool = False, pad_channels: Optional[int] = None,
            parallel_branches: Optional[bool] = None) -> ConvertedModel:
    """Returns an inference module with the same outputs as ``model``, running fused kernels.

    Args:
        model: an HRNet (hrnet_fast, timm, official repo, mmpretrain) or any CNN, in eval mode. A model
            ``convert`` returned comes back with the new run options (its dtype cannot change).
        dtype: run dtype (float32, float16, bfloat16); default: the model's. BN is folded in fp32, then cast.
        backend: "torch", "triton", "cuda", "cpu", or None for the fastest live one per op on the model's device.
        channels_last: lay activations out NHWC; default True (what oneDNN and tensor cores prefer).
        cuda_graph: replay CUDA graphs (``cuda_graph.py``): None (default) whenever the model runs on a CUDA device,
            True always (CUDA models only), False never. HRNets get one graph per batch rounded up to a power of
            two (and per image size, dtype, layout); other models one per input shape. A converted model given
            again keeps its setting unless this is True or False.
        inplace: rewrite ``model`` itself instead of a copy (saves memory; ``model`` is consumed).
        keep_channels_last: return feature maps as the fused kernels wrote them (channels_last) instead of in the
            input's layout, saving one copy per output feature map.
        pad_channels: round every channel count of an HRNet's fused convs up to this multiple, with zero weights
            and biases on the added channels (``padding.py``): the same outputs, at the widths cuDNN's fused
            conv+bias+ReLU and Triton's tensor-core tiles take. None (default): 8 on CUDA (cuDNN), 16 with the
            triton backend, no padding on CPU (oneDNN blocks channels itself); an int >= 1 on any device (1 = off).
            The fusion report and the model's repr say what was padded. A converted model keeps its padding.
        parallel_branches: run an HR module's branches (and its output fusions) at once instead of one after
            another (``replay.py``): on CPU its replayed steps as a dependency graph, steps that can run at once
            each on one thread of a team. None (default): on CPU decided per replayed stage, input shape and
            thread count at the first replayed call by timing both schedules;
            on CUDA serial (docs/convert.md, "Branch-parallel schedule"). True wherever there are two or more
            threads, False never.
            ``HRNET_FAST_PARALLEL_BRANCHES=0`` keeps every model serial. The fusion report says which runs and why.
            A converted model given again keeps its setting unless this is True or False.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() takes an nn.Module, got {type(model).__name__}")
    check_pad_channels(pad_channels)
    if isinstance(model, ConvertedModel):
        return _reconvert(model, dtype, backend, channels_last, cuda_graph, keep_channels_last, inplace,
                          pad_channels, parallel_branches)
    if model.training:
        raise RuntimeError("convert() folds BatchNorm running statistics, so the model must be in eval mode: "
                           "call model.eval() first")
    device = _device_of(model)
    if dtype is None:
        dtype = next((t.dtype for t in model.state_dict().values() if t.is_floating_point()), torch.float32)
    check_options(device, dtype, backend, cuda_graph is True)

    target = model if inplace else copy.deepcopy(model)
    report = FusionReport()
    with torch.no_grad():
        rewritten = rewrite_hrnet(target, dtype, backend, report)
        hrnet = rewritten is not None
        inner: nn.Module = rewritten if hrnet else target
        if not hrnet:
            try:
                inner = fuse_graph(target, dtype, backend, report)
            except Exception as e:  # not traceable as a whole: the structural rules, then module by module
                report.skip("", "torch.fx trace", f"{type(target).__name__}: {type(e).__name__}: "
                                                  f"{error_line(e)}; its parts were fused by structure and one by one")
                rw = Rewriter(dtype, backend, report)
                rw.children("", target)
                fuse_rest(rw, "", target)
    inner.to(dtype).eval().requires_grad_(False)
    channels_last = True if channels_last is None else channels_last
    _report_leftovers(inner, report)
    net = find_hrnet(inner)[1]
    in_chans = _first_conv_in_chans(net if net is not None else inner)
    # After in_chans: a padded model still takes the unpadded image (its stem pads it).
    padding = pad_model(inner, default_multiple(device, backend) if pad_channels is None else pad_channels, report)
    _store_weights(inner, channels_last)
    # HRNets that upsample by nearest neighbour take only sizes whose branches halve exactly; bilinear (segmentation)
    # ones take any size, and so do fusions that compose their resize modules where the branches do not halve.
    nearest = hrnet and any(m.mode == "nearest" and m.up_src and m.resizers is None if isinstance(m, FusedHRFuse)
                            else isinstance(m, nn.Upsample) and m.mode == "nearest" for m in inner.modules())
    converted = ConvertedModel(inner, dtype, channels_last, in_chans, nearest, report, cuda_graph, backend,
                               keep_channels_last, batch_independent=hrnet, padding=padding)
    converted.set_parallel_branches(parallel_branches)
    return converted
