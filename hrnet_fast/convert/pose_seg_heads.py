"""The heads of HigherHRNet (bottom-up pose) and HRNet + OCR (segmentation), fused by structure, so that ours
(``models/higher_hrnet.py``, ``models/ocr.py``) and the official classes convert alike. Each part is rewritten in
place; the model's own forward keeps running (its concatenations, its attention) and calls fused modules.

HigherHRNet (``deconv_layers`` and ``final_layers``, two ``ModuleList``s its forward indexes):

- each deconv stage, ``Sequential(Sequential(ConvTranspose2d, BN, ReLU), Sequential(BasicBlock), …)``, becomes a
  ``FusedChain``: the BN folded into the transposed conv in fp32 (``ops.folding.fold_bn_transposed``), run by
  torch's ``conv_transpose2d`` with the ReLU in place after it (``FusedDeconv``: no fused op takes a transposed
  conv), then the BasicBlocks as one ``FusedBranch`` (residual add and ReLU in each last conv's epilogue);
- each output conv of ``final_layers`` a fused conv with its bias.

HRNet + OCR (an object-attention block: ``f_pixel``, ``f_object``, ``f_down``, ``f_up``, ``key_channels``):

- each of those stacks, 1x1 conv -> ``Sequential(BN, ReLU)`` steps (the official ``BNReLU``), becomes a chain of
  fused convs, and so does the distribution head's ``conv_bn_dropout`` (its dropout an identity at inference);
- the attention itself (two matmuls and a softmax) and the gather head (a softmax and a matmul) run as torch ops:
  the report lists them as left as they are. ``conv3x3_ocr``, ``aux_head`` and ``cls_head`` are conv (-> BN ->
  ReLU) runs the general rules fuse; the resize and concatenation of the branches stay as the forward wrote them.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.folding import fold_bn_transposed
from .fused import FusedBlock, FusedBranch, FusedChain
from .norm_steps import bn_relu_after
from .rewriter import Rewriter

# Identities at inference that may sit in a conv stack (the OCR distribution head's dropout).
_INERT = (nn.Identity, nn.Dropout, nn.Dropout2d)


class FusedDeconv(nn.Module):
    """``relu(conv_transpose2d(x, w', b'))``: a ConvTranspose2d with the BN after it folded into its weight
    [Cin, Cout/groups, kh, kw] and bias [Cout] (fp32, then the run dtype)."""

    def __init__(self, deconv: nn.ConvTranspose2d, bn: nn.Module, relu: bool, dtype: torch.dtype):
        super().__init__()
        w, b = fold_bn_transposed(deconv, bn)
        self.register_buffer("weight", w.to(dtype))
        self.register_buffer("bias", b.to(dtype))
        self.stride, self.padding, self.output_padding = deconv.stride, deconv.padding, deconv.output_padding
        self.groups, self.dilation = deconv.groups, deconv.dilation
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                               self.groups, self.dilation)
        return torch.relu_(y) if self.relu else y

    def extra_repr(self) -> str:
        cin, cout, kh, kw = self.weight.shape
        return (f"{cin}->{cout * self.groups}, {kh}x{kw}, stride={self.stride}, padding={self.padding}, "
                f"relu={self.relu}, dtype={self.weight.dtype}")


def deconv_step(rw: Rewriter, path: str, seq: nn.Module) -> Optional[FusedDeconv]:
    """``Sequential(ConvTranspose2d, BN[, ReLU])`` (the BN and ReLU possibly in a Sequential of their own) as one
    ``FusedDeconv``; None for anything else, or for a BN that normalises with batch statistics (reported)."""
    mods = list(seq) if type(seq) is nn.Sequential else []
    if not mods or not isinstance(mods[0], nn.ConvTranspose2d) or mods[0].padding_mode != "zeros":
        return None
    bn, relu, taken = bn_relu_after(mods, 1)
    if bn is None or 1 + taken != len(mods):
        rw.bn_refused(path, "deconv step", list(seq.modules())[1:])
        return None
    rw.report.add(path, "deconv+bn" + ("+relu" if relu else ""),
                  "BN folded into the ConvTranspose2d; torch's conv_transpose2d runs it, ReLU in place after")
    return FusedDeconv(mods[0], bn, relu, rw.dtype)


def deconv_stage(rw: Rewriter, path: str, stage: nn.Module) -> Optional[FusedChain]:
    """A HigherHRNet deconv stage (module docstring) as a ``FusedChain``, or None where it is not one."""
    mods = list(stage) if type(stage) is nn.Sequential else []
    up = deconv_step(rw, f"{path}.0", mods[0]) if mods else None
    if up is None:
        return None
    blocks: List[FusedBlock] = []
    for k, wrapper in enumerate(mods[1:], start=1):
        inner = list(wrapper) if type(wrapper) is nn.Sequential else []
        block = rw.block(f"{path}.{k}.0", inner[0]) if len(inner) == 1 else None
        if block is None:
            rw.report.skip(f"{path}.{k}", "deconv stage", "not Sequential(residual block)")
            return None
        blocks.append(block)
    return FusedChain(up, FusedBranch(*blocks)) if blocks else FusedChain(up)


def conv_steps(rw: Rewriter, path: str, seq: nn.Module) -> Optional[FusedChain]:
    """A Sequential made only of conv (-> BN) (-> ReLU) steps (and inert dropouts) as a chain of fused convs;
    None (nothing changed) for any other content."""
    mods = list(seq) if type(seq) is nn.Sequential else []
    steps, i = [], 0
    while i < len(mods):
        if isinstance(mods[i], _INERT):
            i += 1
            continue
        if not isinstance(mods[i], nn.Conv2d):
            return None
        bn, relu, taken = bn_relu_after(mods, i + 1)
        if bn is None and rw.bn_refused(f"{path}.{i + 1}", "conv step", mods[i + 1:i + 2]):
            return None
        steps.append((i, mods[i], bn, relu))
        i += 1 + taken
    if not steps:
        return None
    return FusedChain(*(rw.conv(f"{path}.{j}", conv, bn, relu) for j, conv, bn, relu in steps))


def _is_object_attention(m: nn.Module) -> bool:
    return isinstance(getattr(m, "key_channels", None), int) and getattr(m, "scale", 1) == 1 and all(
        type(getattr(m, name, None)) is nn.Sequential for name in ("f_pixel", "f_object", "f_down", "f_up"))


def _replace(rw: Rewriter, owner: nn.Module, prefix: str, names, make) -> None:
    for name in names:
        new = make(rw, prefix + name, getattr(owner, name))
        if new is not None:
            setattr(owner, name, new)


def fuse_task_heads(rw: Rewriter, net: nn.Module) -> None:
    """Rewrites, in place, the HigherHRNet and OCR head parts of ``net`` (module docstring); nothing elsewhere."""
    deconvs, finals = getattr(net, "deconv_layers", None), getattr(net, "final_layers", None)
    if isinstance(deconvs, nn.ModuleList) and isinstance(finals, nn.ModuleList):
        _replace(rw, deconvs, "deconv_layers.", [str(i) for i in range(len(deconvs))], deconv_stage)
        for i, conv in enumerate(finals):
            if isinstance(conv, nn.Conv2d):
                finals[i] = rw.conv(f"final_layers.{i}", conv, None, relu=False)
    for path, m in list(net.named_modules()):
        prefix = f"{path}." if path else ""
        if _is_object_attention(m):
            _replace(rw, m, prefix, ("f_pixel", "f_object", "f_down", "f_up"), conv_steps)
            if isinstance(getattr(m, "pool", None), nn.MaxPool2d):
                m.pool = nn.Identity()  # the official block pools only at scale > 1: never called here
            rw.report.skip(path, "object attention", "its 1x1 conv steps fused; the two matmuls and the softmax "
                                                     "run as torch ops")
        elif isinstance(getattr(m, "object_context_block", None), nn.Module) and hasattr(m, "conv_bn_dropout"):
            _replace(rw, m, prefix, ("conv_bn_dropout",), conv_steps)
