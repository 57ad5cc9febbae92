"""Fusing any traceable CNN: conv -> BN [-> + residual] [-> ReLU] chains found in its torch.fx graph.

For models that are not HRNet-structured (a ResNet, say), the forward's data flow is unknown from the modules
alone, so the graph is traced symbolically and each chain whose intermediate values have no other user becomes
one fused conv module called with the residual as an argument.
"""
from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..ops.folding import bn_not_foldable, is_batchnorm, is_foldable_bn
from .fused import make_conv
from .report import FusionReport, report_conv

_ADDS = {operator.add, operator.iadd, torch.add}
_RELU_FUNCS = {torch.relu, F.relu, torch.relu_}


def _module(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_module(gm, node), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    return node.op == "call_method" and node.target in ("relu", "relu_")


class _Tracer(fx.Tracer):
    """torch.fx's tracer with every BatchNorm form a leaf: torchvision's FrozenBatchNorm2d and mmcv's _BatchNormXd
    live outside torch.nn, so fx would trace into their forward and the conv -> BN chain would be lost."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_batchnorm(m) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _drop_inert(gm: fx.GraphModule) -> None:
    """Removes calls to modules that are identities at inference (nn.Identity, dropout), which would otherwise
    sit between a BN and its ReLU (timm's blocks call ``drop_block`` and ``aa`` there)."""
    for node in list(gm.graph.nodes):
        if isinstance(_module(gm, node), (nn.Identity, nn.Dropout, nn.Dropout2d)) and len(node.args) == 1:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


def fuse_graph(model: nn.Module, dtype: torch.dtype, backend: Optional[str], report: FusionReport,
               path: str = "") -> fx.GraphModule:
    """Traces ``model`` and replaces its conv->BN(->add)(->ReLU) chains; raises torch.fx's error if the model
    cannot be traced. ``path``: where ``model`` sits in the converted model (for the report)."""
    prefix = f"{path}." if path else ""
    gm = _trace(model)
    _drop_inert(gm)
    count = 0
    for node in list(gm.graph.nodes):
        conv = _module(gm, node)
        if not isinstance(conv, nn.Conv2d):
            continue
        bn_node = _only_user(node)
        bn = _module(gm, bn_node) if bn_node is not None else None
        if not is_foldable_bn(bn):
            if bn is not None and is_batchnorm(bn):  # train mode or no running statistics: said now, before eval()
                report.skip(prefix + str(bn_node.target), "conv+bn", f"not folded: {bn_not_foldable(bn)}")
            continue
        chain, residual, relu = [node, bn_node], None, False
        nxt = _only_user(bn_node)
        if nxt is not None and nxt.op in ("call_function", "call_method") and nxt.target in _ADDS | {"add", "add_"} \
                and len(nxt.args) == 2 and not nxt.kwargs:
            other = nxt.args[1] if nxt.args[0] is bn_node else nxt.args[0]
            if isinstance(other, fx.Node):
                chain.append(nxt)
                residual = other
                nxt = _only_user(nxt)
        if nxt is not None and _is_relu(gm, nxt):
            chain.append(nxt)
            relu = True
        fused, why = make_conv(conv, bn, relu, dtype, backend)
        name = f"fused_conv_{count}"
        count += 1
        gm.add_submodule(name, fused)
        pattern = "conv+bn" + ("+add" if residual is not None else "") + ("+relu" if relu else "")
        report_conv(report, prefix + str(node.target), pattern, conv, why)
        args = (node.args[0],) if residual is None else (node.args[0], residual)
        with gm.graph.inserting_after(chain[-1]):
            new = gm.graph.call_module(name, args)
        chain[-1].replace_all_uses_with(new)
        for n in reversed(chain):
            gm.graph.erase_node(n)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
