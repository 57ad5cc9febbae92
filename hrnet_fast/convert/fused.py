"""Inference modules that replace conv+BN(+residual)(+ReLU) chains and HRNet's fusion step with fused ops.

Each module folds BatchNorm into its convolution once, in fp32, and stores the result in the run dtype. Backend
choice is per device type, resolved once and cached (``hrnet_fast.ops.backends.select``), so the forward pass
does no availability checks.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import cpu_conv, direct
from ..ops.backends import resolve
from ..ops.folding import fold_bn
from ..ops.onednn_conv import OnednnConv
from ..ops.weights import PreparedWeight, stored_weight
from . import branch_streams, replay
from .folded_conv import FoldedConv, as_channels_last


def supported_conv(conv: nn.Conv2d) -> Optional[str]:
    """None if ``conv_bn_act`` can run ``conv``, else the reason it cannot."""
    k = conv.kernel_size
    if k not in ((1, 1), (3, 3)):
        return f"{k[0]}x{k[1]} kernel (conv_bn_act takes 1x1 and 3x3)"
    if conv.groups != 1:
        return f"groups={conv.groups} (conv_bn_act takes groups=1)"
    if conv.dilation != (1, 1):
        return f"dilation={conv.dilation}"
    if conv.stride not in ((1, 1), (2, 2)):
        return f"stride={conv.stride}"
    if isinstance(conv.padding, str) or conv.padding[0] != conv.padding[1] or conv.padding[0] > k[0] // 2:
        return f"padding={conv.padding}"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}"
    return None


class FusedConvBNAct(nn.Module):
    """``relu(conv(x) + b' + residual)`` with BN folded into the conv: one ``conv_bn_act`` call.

    Buffers: ``weight`` [Cout, Cin, k, k], dense in the activations' memory format (channels_last unless
    ``set_activation_layout(False)``), and ``bias`` [Cout]; folded in fp32 then cast to ``dtype``. Each backend
    gets the weight in the form it reads (``hrnet_fast.ops.weights``), built once and rebuilt only when the
    stored weight changes, so no call copies or reorders it.
    """

    def __init__(self, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], relu: bool, dtype: torch.dtype,
                 backend: Optional[str]):
        super().__init__()
        if bn is not None:
            w, b = fold_bn(conv, bn)
        else:
            w = conv.weight.detach().float()
            b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(conv.out_channels,
                                                                                     device=w.device)
        self.channels_last = True
        self.register_buffer("weight", stored_weight(w.to(dtype), self.channels_last))
        self.register_buffer("bias", b.to(dtype).contiguous())
        self.stride = conv.stride[0]
        self.padding = conv.padding[0]
        self.relu = relu
        self.requested_backend = backend
        self._prepared = PreparedWeight()

    def set_activation_layout(self, channels_last: bool) -> None:
        """Stores the weight dense in the memory format the activations will have (what ``convert`` decides)."""
        self.channels_last = channels_last
        self.weight = stored_weight(self.weight, channels_last)

    def _apply(self, fn, recurse=True):
        self._prepared.clear()  # moved or cast: free the old device's copy now rather than at the next call
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                residual_is_free: bool = False) -> torch.Tensor:
        """``residual_is_free``: nothing else reads ``residual`` after this call, so the CPU path may write the
        output over it."""
        # Buffers read from the dict: nn.Module.__getattr__ costs ~0.5 us a lookup, at ~300 convs a forward.
        weight, bias = self._buffers["weight"], self._buffers["bias"]
        # Prepared forms (oneDNN state among them) only where the call runs eagerly on real tensors; traced and
        # compiled calls read the stored weight, already in the activations' layout.
        prepared = None
        if not torch.compiler.is_compiling():
            prepared = self._prepared.current(weight)
            if prepared is None and direct.plain_eager_call(x, residual):  # first call, or the weight changed
                prepared = self._prepared.get(resolve("conv_bn_act", x.device.type, self.requested_backend),
                                              weight, stride=self.stride, padding=self.padding,
                                              channels_last=self.channels_last, x_shape=x.shape)
        if type(prepared) is OnednnConv:
            # The kept oneDNN primitives; the extension checks that this is a plain eager call they take as given
            # and returns None otherwise.
            y = prepared.run(x, bias, residual, self.relu, residual_is_free) if torch._C._get_mkldnn_enabled() \
                else None
            if y is None and x.dim() == 4 and x.dtype == prepared.dtype and direct.plain_eager_call(x, residual) \
                    and not x.is_contiguous(memory_format=torch.channels_last) and torch._C._get_mkldnn_enabled():
                y = prepared.run(as_channels_last(x), bias, residual, self.relu, residual_is_free)
            if y is not None:
                return y
        elif prepared is not None and direct.plain_eager_call(x, residual):
            if prepared.is_mkldnn:
                if x.dtype == prepared.dtype and x.is_contiguous(memory_format=torch.channels_last):
                    # ATen's oneDNN op, called directly: the op layers add ~15 us a call to a ~40 us kernel.
                    return cpu_conv.onednn_fused(x, prepared, bias, self.stride, self.padding, residual,
                                                 self.relu, residual_is_free)
            else:
                weight = prepared
        return torch.ops.hrnet_fast.conv_bn_act(x, weight, bias, residual, self.stride, self.padding, self.relu,
                                                resolve("conv_bn_act", x.device.type, self.requested_backend))

    def _emit(self, b: "replay.Builder", x: int, residual: Optional[int] = None) -> int:
        """The forward's step (``replay.py``): its kept oneDNN primitives, where a CPU call has made them."""
        weight, bias = self._buffers["weight"], self._buffers["bias"]
        if resolve("conv_bn_act", "cpu", self.requested_backend) != "cpu":
            raise replay.NotReplayable(f"a conv runs on the {self.requested_backend!r} backend")
        prepared = self._prepared.current(weight)
        if prepared is None:
            raise replay.NotReady()
        if type(prepared) is not OnednnConv:
            raise replay.NotReplayable("a conv runs on ATen's path")
        return b.conv(prepared._handle, weight, bias, self.relu, x, residual)

    def extra_repr(self) -> str:
        cout, cin, k, _ = self.weight.shape
        return (f"{cin}->{cout}, {k}x{k}, stride={self.stride}, padding={self.padding}, relu={self.relu}, "
                f"dtype={self.weight.dtype}")


def make_conv(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], relu: bool, dtype: torch.dtype,
              backend: Optional[str]) -> Tuple[nn.Module, Optional[str]]:
    """The fused module for conv(+bn)(+relu) and, when it cannot be fused, the reason."""
    why = supported_conv(conv)
    if why is None:
        return FusedConvBNAct(conv, bn, relu, dtype, backend), None
    return FoldedConv(conv, bn, relu, dtype, backend), why


class FusedChain(nn.Sequential):
    """Fused conv steps applied one after another (transition and downsampling chains)."""

    def _emit(self, b: "replay.Builder", x: int) -> int:
        for step in self:
            x = b.emit(step, x)
        return x


class FusedBlock(nn.Module):
    """A ResNet BasicBlock/Bottleneck: the residual add and final ReLU run in the last conv's epilogue."""

    def __init__(self, convs: Sequence[nn.Module], downsample: Optional[nn.Module]):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, input_is_free: bool = False) -> torch.Tensor:
        """``input_is_free``: nothing else reads ``x`` after this block (``FusedBranch`` knows when), so the last
        conv may write its output over the shortcut. A downsampled shortcut is this block's own tensor."""
        if self.downsample is None:
            shortcut, free = x, input_is_free
        else:
            shortcut, free = self.downsample(x), not _hooked(self.downsample)
        convs = list(self.convs)
        y = x
        for conv in convs[:-1]:
            y = conv(y)
        return convs[-1](y, residual=shortcut, residual_is_free=free)

    def _emit(self, b: "replay.Builder", x: int) -> int:
        # Where the residual may be summed in place is the builder's to decide, from what reads it later.
        shortcut = x if self.downsample is None else b.emit(self.downsample, x)
        convs = list(self.convs)
        y = x
        for conv in convs[:-1]:
            y = b.emit(conv, y)
        return b.emit(convs[-1], y, residual=shortcut)


def _hooked(m: nn.Module) -> bool:
    """Whether a hook may keep a reference to ``m``'s output (then it must not be overwritten later): a global
    forward hook, or one on ``m`` or on any module whose output is ``m``'s output (a block's last conv, a
    chain's last step, and so on down)."""
    if nn.modules.module._global_forward_hooks:
        return True
    while m is not None:
        if m._forward_hooks:
            return True
        if isinstance(m, FusedBlock):
            m = m.convs[-1]
        elif isinstance(m, nn.Sequential) and len(m):
            m = m[-1]
        else:
            m = None
    return False


class FusedBranch(nn.Sequential):
    """A run of ``FusedBlock``s (an HRNet branch, layer1). Each block's input is the previous block's output,
    which nothing else reads (unless a forward hook may have kept it), so each block after the first may write
    its result over its input: no residual copy. On CPU its calls after the first replay its steps in one call
    (``replay.py``)."""

    def __init__(self, *args):
        super().__init__(*args)
        self._replay = replay.Replay()
        self.parallel_branches: Optional[bool] = None  # the schedule of replayed calls (replay.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = replay.run(self, [x])
        if out is not None:
            return out[0]
        y, prev = x, None
        for block in self:
            y = block(y, input_is_free=prev is not None and not _hooked(prev))
            prev = block
        replay.refresh(self, [x], as_list=False)
        return y

    def _emit(self, b: "replay.Builder", x: int) -> int:
        for block in self:
            x = b.emit(block, x)
        return x


class FusedHRFuse(nn.Module):
    """HRNet's multi-resolution fusion for one output branch i, as one ``multires_fuse`` call:

        y_i = relu(x_i + sum_{j>i} up(conv1x1_bn(x_j)) + sum_{j<i} chain_j(x_j))

    The 1x1 conv+BN of an upsampled term runs at the low resolution (a per-pixel map commutes with nearest and
    bilinear upsampling alike), and ``multires_fuse`` reads its output in place instead of materialising the
    upsampled copy. ``mode`` is "nearest" (classification, pose) or "bilinear" (segmentation: each term resized
    to x_i's exact size, with ``align_corners``).
    """

    def __init__(self, index: int, up: Dict[int, nn.Module], down: Dict[int, nn.Module], backend: Optional[str],
                 mode: str = "nearest", align_corners: bool = False, exact_only: Optional["ExactOnly"] = None):
        super().__init__()
        self.index = index
        self.up_src = sorted(up)
        self.down_src = sorted(down)
        self.up = nn.ModuleList(up[j] for j in self.up_src)
        self.down = nn.ModuleList(down[j] for j in self.down_src)
        self.requested_backend = backend
        self.mode = mode
        self.align_corners = align_corners
        # Terms that end in a resize module (``hr_rules.py``): ``mode`` is theirs only where each branch is exactly
        # half the one above; elsewhere the modules run, then the forward's second resize, as the original does.
        self.resizers = None if exact_only is None else nn.ModuleList(exact_only.resizers[j] for j in self.up_src)
        self.post_align_corners = None if exact_only is None else exact_only.post_align_corners

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        low = [f(xs[j]) for f, j in zip(self.up, self.up_src)]
        same = [f(xs[j]) for f, j in zip(self.down, self.down_src)]
        x = xs[self.index]
        if self.resizers is not None and not halves_exactly(xs):
            same += [self._composed(r(t), x) for r, t in zip(self.resizers, low)]
            low = []
        return fuse(x, low, same, self.mode, self.align_corners, self.requested_backend)

    def _composed(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.post_align_corners is None:
            return t
        return F.interpolate(t, size=x.shape[-2:], mode="bilinear", align_corners=self.post_align_corners)

    def _emit(self, b: "replay.Builder", xs: List[int]) -> int:
        if self.requested_backend not in (None, "cpu") or not direct.cpu_fuse_available():
            raise replay.NotReplayable("the fusion does not run on the compiled CPU kernel")
        low = [b.emit(f, xs[j]) for f, j in zip(self.up, self.up_src)]
        same = [b.emit(f, xs[j]) for f, j in zip(self.down, self.down_src)]
        return b.fuse(xs[self.index], low, same, self.mode, self.align_corners)

    def extra_repr(self) -> str:
        return f"index={self.index}, mode={self.mode!r}" + (
            f", align_corners={self.align_corners}" if self.mode == "bilinear" else "")


@dataclass
class ExactOnly:
    """The resize modules ending a fusion's upsampled terms (by source branch) and the forward's second resize's
    ``align_corners`` (None: none), for the sizes where ``FusedHRFuse``'s mode alone is not what they compute."""
    resizers: Dict[int, nn.Module]
    post_align_corners: Optional[bool]


def halves_exactly(xs: Sequence[torch.Tensor]) -> bool:
    """Whether each branch map is exactly half the size of the one above (a resize by 2**j then reaches branch 0)."""
    h, w = xs[0].shape[-2:]
    return all(x.shape[-2] << j == h and x.shape[-1] << j == w for j, x in enumerate(xs))


def _needs_halving(modules) -> bool:
    return any(getattr(m, "resizers", None) is not None or getattr(m, "needs_halving", False) for m in modules)


def fuse(x: torch.Tensor, low: List[torch.Tensor], same: List[torch.Tensor], mode: str, align_corners: bool,
         backend: Optional[str]) -> torch.Tensor:
    """relu(x + sum up(low) + sum same) through the compiled CPU entry point where it applies, else the op."""
    out = direct.multires_fuse(x, low, same, True, backend, mode=mode, align_corners=align_corners)
    if out is not None:
        return out
    return torch.ops.hrnet_fast.multires_fuse(x, low, same, True, mode, align_corners,
                                              resolve("multires_fuse", x.device.type, backend))


class FusedHRModule(nn.Module):
    """An HRNet HighResolutionModule: fused branch blocks, then one ``FusedHRFuse`` per output branch. On CPU its
    calls after the first replay its steps in one call (``replay.py``)."""

    def __init__(self, branches: Sequence[nn.Module], fuses: Sequence[FusedHRFuse]):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.fuses = nn.ModuleList(fuses)
        # Steps are listed for the sizes where every branch halves exactly: other sizes take the module path.
        self.needs_halving = _needs_halving(fuses)
        self._replay = replay.Replay()
        self.parallel_branches: Optional[bool] = None  # the schedule of replayed calls (replay.py)

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        out = replay.run(self, list(xs)) if not self.needs_halving or halves_exactly(xs) else None
        if out is not None:
            return out
        if branch_streams.concurrent(self.parallel_branches, xs[0]):  # a CUDA graph capture (branch_streams.py)
            ys = branch_streams.run_parts([functools.partial(b, x) for b, x in zip(self.branches, xs)], xs[0].device)
            if len(self.fuses):
                ys = branch_streams.run_parts([functools.partial(f, ys) for f in self.fuses], xs[0].device)
            return ys
        ys = [branch(x) for branch, x in zip(self.branches, xs)]
        if len(self.fuses):
            ys = [fuse(ys) for fuse in self.fuses]
        replay.refresh(self, xs)
        return ys

    def _emit(self, b: "replay.Builder", xs: List[int]) -> List[int]:
        # The branches share no data, nor do the output fusions: the extension may run them at once (replay.py).
        ys = [b.emit(branch, x) for branch, x in zip(self.branches, xs)]
        return [b.emit(fuse, ys) for fuse in self.fuses] if len(self.fuses) else ys


class FusedStage(nn.Sequential):
    """An HRNet stage: its ``FusedHRModule``s one after another, on the list of branch maps. On CPU its calls
    after the first replay all their steps in one call (``replay.py``), where each module's branches may also
    sum their first residuals in place: the previous module's outputs, which nothing else reads."""

    def __init__(self, *args):
        super().__init__(*args)
        self.needs_halving = _needs_halving(self)
        self._replay = replay.Replay()
        self.parallel_branches: Optional[bool] = None  # the schedule of replayed calls (replay.py)

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        out = replay.run(self, list(xs)) if not self.needs_halving or halves_exactly(xs) else None
        if out is not None:
            return out
        ys = xs
        for module in self:
            ys = module(ys)
        replay.refresh(self, xs)
        return ys

    def _emit(self, b: "replay.Builder", xs: List[int]) -> List[int]:
        for module in self:
            xs = b.emit(module, xs)
        return xs


# Every module the converter produces whose forward runs fused ops only.
FUSED_MODULES = (FusedConvBNAct, FoldedConv, FusedBlock, FusedBranch, FusedChain, FusedHRFuse, FusedHRModule,
                 FusedStage)
