"""Lite-HRNet's blocks (mmpose ``mmpose/models/backbones/litehrnet.py``): the channel shuffle in the activations'
layout.

mmpose's ``ConditionalChannelWeighting`` (each branch split in channel halves, one half weighted, the halves
concatenated) and its ``Stem`` end in ``channel_shuffle(torch.cat([a, b], 1), 2)``, that is
``y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)``. On channels_last maps that
``.contiguous()`` writes NCHW, so every conv after it (the next block's depthwise convs, the fusion and
transition convs) first copies its input back into channels_last: on Lite-HRNet-18 at 256x192 about 170 layout
copies a forward, a third of the converted forward at one thread (torch.profiler, AMD EPYC). With two halves of
one shape the shuffle only interleaves their channels (output channel 2k + j is channel k of half j), so here it
is one copy, in the halves' own layout (``interleave``), which replaces both the cat and the shuffle's copy.

The replacement keeps the module's children (fused by the walk afterwards) under the same names, so the same
state-dict keys, and calls them in the same order. A module is recognised by its children's names, then checked
by behaviour: at convert time its own forward and the replacement's run on a small random input (``probe.py``)
and must agree, else it is left as it is and the report says why.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from . import probe

_WEIGHTING = ("cross_resolution_weighting", "depthwise_convs", "spatial_weighting")
_STEM = ("conv1", "branch1", "expand_conv", "depthwise_conv", "linear_conv")
SHUFFLE = "channel shuffle"  # the report's pattern for a replaced block


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``channel_shuffle(torch.cat([a, b], 1), 2)``, written in the halves' layout: channels_last when ``b`` is
    (the converted model's maps), else NCHW as the model's own code writes it."""
    if not b.is_contiguous(memory_format=torch.channels_last) or b.is_contiguous():
        y = torch.cat([a, b], 1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
    a_hwc, b_hwc = a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)
    if a.shape == b.shape:  # one copy: [n, h, w, c/2, 2] is [n, h, w, c] with the halves' channels interleaved
        return torch.stack((a_hwc, b_hwc), dim=4).flatten(3).permute(0, 3, 1, 2)
    y = torch.cat((a_hwc, b_hwc), dim=3)  # halves of different widths: the shuffle of their concatenation
    n, h, w, c = y.shape
    return y.view(n, h, w, 2, c // 2).transpose(3, 4).reshape(n, h, w, c).permute(0, 3, 1, 2)


class ShuffledChannelWeighting(nn.Module):
    """``ConditionalChannelWeighting``'s forward with ``interleave`` for its shuffle (see the module docstring)."""

    def __init__(self, m: nn.Module):
        super().__init__()
        for name in _WEIGHTING:
            self.add_module(name, getattr(m, name))

    def forward(self, x: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        halves = [s.chunk(2, dim=1) for s in x]
        weighted = self.cross_resolution_weighting([s[1] for s in halves])
        weighted = [sw(dw(s)) for s, dw, sw in zip(weighted, self.depthwise_convs, self.spatial_weighting)]
        return [interleave(s[0], s2) for s, s2 in zip(halves, weighted)]


class ShuffledStem(nn.Module):
    """Lite-HRNet's ``Stem`` forward with ``interleave`` for its shuffle (see the module docstring)."""

    def __init__(self, m: nn.Module):
        super().__init__()
        for name in _STEM:
            self.add_module(name, getattr(m, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.conv1(x).chunk(2, dim=1)
        x2 = self.linear_conv(self.depthwise_conv(self.expand_conv(x2)))
        return interleave(self.branch1(x1), x2)


def shuffled_block(rw, path: str, m: nn.Module) -> Optional[nn.Module]:
    """The replacement of a Lite-HRNet weighting block or stem (its children not yet fused), or None."""
    names = tuple(name for name, _ in m.named_children())
    if set(names) == set(_WEIGHTING):
        new, xs = ShuffledChannelWeighting(m), _weighting_input(m)
    elif set(names) == set(_STEM):
        new, xs = ShuffledStem(m), _stem_input(m)
    else:
        return None
    if xs is None or not _agrees(m, new, xs):
        rw.report.skip(path, SHUFFLE, f"{type(m).__name__}: its forward does not compute the channel shuffle of "
                                      f"its halves as Lite-HRNet's does; it runs as it is")
        return None
    rw.report.add(path, SHUFFLE, "the halves' concatenation and channel shuffle as one copy in the maps' layout")
    return new


def _weighting_input(m: nn.Module) -> Optional[List[torch.Tensor]]:
    """A branch list for the probe: each branch twice its depthwise conv's width, the sizes of ``probe``'s."""
    convs = [probe.first_conv(dw) for dw in m.depthwise_convs]
    if not convs or any(c is None for c in convs):
        return None
    sizes = probe.branch_sizes(len(convs))
    return [_channels_last(probe.probe_input(m, 2 * c.in_channels, s, seed=i))
            for i, (c, s) in enumerate(zip(convs, sizes))]


def _stem_input(m: nn.Module) -> Optional[List[torch.Tensor]]:
    conv = probe.first_conv(m.conv1)
    return None if conv is None else [_channels_last(probe.probe_input(m, conv.in_channels, probe.IMAGE, seed=0))]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)  # the layout the converted model runs it on


def _agrees(m: nn.Module, new: nn.Module, xs: List[torch.Tensor]) -> bool:
    """Whether the module's forward and the replacement's give the same maps on ``xs`` (a branch list for a
    weighting block, the image for a stem)."""
    arg = xs if isinstance(new, ShuffledChannelWeighting) else xs[0]
    try:
        reference, candidate = m(list(arg) if isinstance(arg, list) else arg), new(arg)
    except (RuntimeError, TypeError, ValueError, IndexError, AttributeError):
        return False
    as_list = (lambda y: list(y) if isinstance(y, (list, tuple)) else [y])
    return probe.same(as_list(candidate), as_list(reference))
