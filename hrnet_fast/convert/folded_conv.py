"""``FoldedConv``: a convolution ``conv_bn_act`` cannot run (grouped, 7x7, ...), BN folded into it, and on CPU its
kept oneDNN primitives; ``as_channels_last``, the one layout copy a converted conv makes of a map the model's own
code laid out otherwise."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from ..ops import direct
from ..ops.backends import resolve
from ..ops.folding import fold_bn
from ..ops.onednn_conv import OnednnConv
from ..ops.weights import PreparedWeight, stored_weight


class FoldedConv(nn.Module):
    """A convolution ``conv_bn_act`` cannot run (e.g. 7x7, grouped): BN folded into a plain conv, then ReLU.

    On CPU with channels_last activations, a conv oneDNN takes as it is (square kernel, one stride and padding for
    both axes, no dilation, zero padding; grouped included) runs through kept oneDNN primitives (``OnednnConv``)
    with bias, residual and ReLU in its epilogue, as ``FusedConvBNAct`` does. ATen makes a oneDNN primitive on
    every call: on Lite-HRNet-18's 3x3 depthwise convs at batch 1 (20-160 channels, 8x6 to 128x96 maps; AMD EPYC,
    one thread, channels_last, medians of 200 calls side by side) 110-160 us a call, the kept primitive 19-57 us.
    Elsewhere (CUDA, the ``torch`` backend, a reduced precision oneDNN does not compute natively) the plain conv
    runs.
    """

    def __init__(self, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], relu: bool, dtype: torch.dtype,
                 backend: Optional[str] = None):
        super().__init__()
        w, b = fold_bn(conv, bn) if bn is not None else (conv.weight.detach().float(),
                                                         None if conv.bias is None else conv.bias.detach().float())
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=b is not None, padding_mode=conv.padding_mode,
                              device=w.device, dtype=dtype)
        with torch.no_grad():
            self.conv.weight.copy_(w)
            if b is not None:
                self.conv.bias.copy_(b)
        self.conv.requires_grad_(False)
        self.relu = relu
        self.requested_backend = backend
        self.channels_last = True
        self.kept_geometry = _kept_geometry(self.conv)
        self._prepared = PreparedWeight()

    def set_activation_layout(self, channels_last: bool) -> None:
        """Stores the weight dense in the activations' memory format, which cuDNN reads without a per-call copy."""
        self.channels_last = channels_last
        self.conv.weight = nn.Parameter(stored_weight(self.conv.weight, channels_last), requires_grad=False)

    def _apply(self, fn, recurse=True):
        self._prepared.clear()  # moved or cast: the kept primitives hold the old weight
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                residual_is_free: bool = False) -> torch.Tensor:
        kept = self._kept(x, residual)
        if kept is not None:
            bias = self.conv.bias if self.conv.bias is not None else self._zero_bias()
            y = kept.run(as_channels_last(x), bias, residual, self.relu, residual_is_free)
            if y is not None:
                return y
        y = self.conv(x)
        if residual is not None:
            y = y + residual
        return torch.relu(y) if self.relu else y

    def _kept(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> Optional[OnednnConv]:
        """The kept oneDNN primitives for this call (built on the first CPU call), or None: the plain conv runs.
        Only plain eager calls take them (``direct.plain_eager_call``: not traced, compiled or under a mode), so a
        traced value is never tested here."""
        if self.kept_geometry is None or not self.channels_last or torch.compiler.is_compiling() or \
                not torch._C._get_mkldnn_enabled() or not direct.plain_eager_call(x, residual):
            return None
        weight = self.conv.weight
        prepared = self._prepared.current(weight)
        if prepared is None and x.is_cpu and x.dim() == 4 and \
                resolve("conv_bn_act", "cpu", self.requested_backend) == "cpu":
            stride, padding = self.kept_geometry
            prepared = self._prepared.get("cpu", weight, stride=stride, padding=padding, channels_last=True,
                                          x_shape=x.shape, groups=self.conv.groups)
        return prepared if type(prepared) is OnednnConv else None

    def _zero_bias(self) -> torch.Tensor:
        """The kept primitive always adds a bias: zeros for a conv without one (no BN, no bias)."""
        zeros = getattr(self, "_zeros", None)
        if zeros is None or zeros.device != self.conv.weight.device or zeros.dtype != self.conv.weight.dtype:
            zeros = self._zeros = self.conv.weight.new_zeros(self.conv.out_channels)
        return zeros


def _kept_geometry(conv: nn.Conv2d) -> Optional[Tuple[int, int]]:
    """(stride, padding) where oneDNN's kept primitives compute ``conv`` as it is, else None."""
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    if k[0] != k[1] or s[0] != s[1] or isinstance(p, str) or p[0] != p[1] or conv.dilation != (1, 1) or \
            conv.padding_mode != "zeros":
        return None
    return s[0], p[0]


def as_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the kept primitives read it. The model's own code may hand a fused conv another layout (Lite-HRNet's
    channel shuffle ends in ``.contiguous()``, NCHW, and its channel halves are strided views): one copy into
    channels_last here is what ATen's convolution would make of it too (it follows the channels_last weight), and
    the conv's output is channels_last again for what follows."""
    return x if x.is_contiguous(memory_format=torch.channels_last) else x.contiguous(memory_format=torch.channels_last)
