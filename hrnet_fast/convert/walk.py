"""Fusing what the structural rules left, module by module: a head around an HRNet backbone, or a whole model
torch.fx cannot trace (Lite-HRNet's blocks, modules called with lists, forwards with control flow).

Each module is taken the most complete way that is safe for it:
- a bare conv (a pose head's 1x1 conv to heatmaps) becomes a fused conv with its bias;
- a plain ``nn.Sequential`` is its data flow, so each conv (-> BN) (-> ReLU) run in it becomes one fused conv;
- a ``ModuleList`` / ``ModuleDict`` (or a plain ``nn.Module`` holding modules) has no forward of its own (its owner
  calls the entries): each entry is taken;
- any other module is traced with torch.fx (conv -> BN (-> add) (-> ReLU) chains in its graph); where the trace
  fails (control flow on traced values, an argument that is a list, a container called as a module), the report
  says why and each of its children is taken the same way, so what sits inside it is still fused.
"""
from __future__ import annotations

from typing import List

import torch.nn as nn

from .fused import FUSED_MODULES
from .fx_fuse import fuse_graph
from .norm_steps import bn_relu_after
from .rewriter import Rewriter


def _contains(m: nn.Module, kinds) -> bool:
    return any(isinstance(s, kinds) for s in m.modules())


def fuse_rest(rw: Rewriter, path: str, m: nn.Module) -> None:
    """Fuses, in place, what the structural rules left under ``m`` (see the module docstring)."""
    prefix = f"{path}." if path else ""
    for name, child in list(m.named_children()):
        if child is not None:
            new = _fused(rw, prefix + name, child)
            if new is not child:
                setattr(m, name, new)


def _fused(rw: Rewriter, path: str, m: nn.Module) -> nn.Module:
    """The replacement of one module left by the rules (``m`` itself, rewritten inside, where it has none)."""
    if isinstance(m, FUSED_MODULES) or not _contains(m, nn.Conv2d):
        return m
    if isinstance(m, nn.Conv2d):
        return rw.conv(path, m, None, relu=False)
    if type(m) is nn.Sequential and any(isinstance(c, nn.Conv2d) for c in m):
        return _sequential_runs(rw, path, m)
    if isinstance(m, (nn.ModuleList, nn.ModuleDict)) or type(m).forward is nn.Module.forward:
        fuse_rest(rw, path, m)  # a container: its owner calls its entries
        return m
    if not _contains(m, FUSED_MODULES):
        try:
            gm = fuse_graph(m, rw.dtype, rw.backend, rw.report, path)
        except Exception as e:  # not traceable as a whole: its children are, or their children
            rw.report.skip(path, "torch.fx trace", f"{type(m).__name__}: {type(e).__name__}: {error_line(e)}; "
                                                   f"its children were fused one by one")
        else:
            # Convs with no BN after them (an output conv) are called with one argument, as a fused conv is.
            for node in gm.graph.nodes:
                if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv2d):
                    gm.add_submodule(node.target, rw.conv(f"{path}.{node.target}", gm.get_submodule(node.target),
                                                          None, relu=False))
            return gm
    fuse_rest(rw, path, m)
    return m


def error_line(e: Exception) -> str:
    """torch.fx's errors run to several lines (a traceback hint); the report keeps the first."""
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def _sequential_runs(rw: Rewriter, path: str, seq: nn.Sequential) -> nn.Sequential:
    """``seq`` with each conv (-> BN) (-> ReLU) run replaced by one fused conv (nn.Sequential applies its modules
    in order, so the runs are the data flow); other modules kept, and fused inside where they have convs."""
    mods = list(seq)
    out: List[nn.Module] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d):
            bn, relu, taken = bn_relu_after(mods, i + 1)
            if bn is None:  # no foldable BN: the conv still takes a ReLU right after it
                rw.bn_refused(f"{path}.{i + 1}", "conv step", mods[i + 1:i + 2])
                relu = i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
                taken = int(relu)
            out.append(rw.conv(f"{path}.{i}", m, bn, relu))
            i += 1 + taken
        else:
            out.append(_fused(rw, f"{path}.{i}", m))
            i += 1
    return nn.Sequential(*out)
