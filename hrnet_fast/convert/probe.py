"""How a model whose forward resizes by itself resizes, found by running it once at convert time.

The official segmentation code (HRNet-Semantic-Segmentation's ``seg_hrnet.py``) resizes in its forwards, with
nothing on the modules to read: each HR module adds its upsampled terms as ``F.interpolate(term, size=<target
branch>, mode='bilinear', align_corners=ALIGN_CORNERS)``, a module-level setting (absent in early revisions,
where it is PyTorch's default, False), and the model resizes branches 1..3 to branch 0 before ``last_layer`` the
same way. Converting such a model needs both facts: that the resize is bilinear, and its ``align_corners``.

So ``convert`` runs the module as it is on a small random input whose branch sizes do not halve exactly (9x7,
5x4, 3x2, 2x1: every resize then interpolates, and the two corner rules give different answers) and compares it
with the same sub-modules composed around ``F.interpolate(..., "bilinear", align_corners)`` for True and for
False. The composition that matches, to float32 rounding, is the module's; when neither does, the module is left
unfused and the report says why. The probe runs in the model's dtype, on its device, before anything is
rewritten.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

BRANCH0 = (9, 7)     # branch 0 of an HR module probe; lower branches follow the stride-2 convs: 5x4, 3x2, 2x1
IMAGE = (36, 28)     # a model probe's input: the stem's two stride-2 convs bring it to BRANCH0
# The probe compares the same operations in the model's dtype, so it needs no more than rounding slack.
RTOL = {torch.float32: 1e-5, torch.float64: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def first_conv(m: nn.Module) -> Optional[nn.Conv2d]:
    return next((c for c in m.modules() if isinstance(c, nn.Conv2d)), None)


def branch_sizes(n: int) -> List[Sequence[int]]:
    sizes = [BRANCH0]
    for _ in range(n - 1):
        sizes.append(tuple((s - 1) // 2 + 1 for s in sizes[-1]))
    return sizes


def _resize(t: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=align_corners)


def same(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    def close(x: torch.Tensor, y: torch.Tensor) -> bool:
        tol = RTOL.get(y.dtype, 1e-5)
        return x.shape == y.shape and torch.allclose(x.float(), y.float(), rtol=tol,
                                                     atol=tol * max(y.abs().max().item(), 1.0))
    return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))


def _matching(reference: List[torch.Tensor], candidate: Callable[[bool], List[torch.Tensor]]) -> Optional[bool]:
    for align_corners in (True, False):
        if same(candidate(align_corners), reference):
            return align_corners
    return None


def probe_input(like: nn.Module, channels: int, size: Sequence[int], seed: int) -> torch.Tensor:
    p = next(like.parameters())
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, channels, *size, generator=g).to(device=p.device, dtype=p.dtype)


def fuse_reference(fuse_layers: nn.ModuleList, ys: List[torch.Tensor],
                   align_corners: Optional[bool]) -> List[torch.Tensor]:
    """HRNet's fusion with bilinear resizing: ``relu(sum_j term_ij)``, term_ii = y_i, term_ij = f_ij(y_j) for
    j < i, and f_ij(y_j) resized to y_i's size for j > i (``align_corners`` None: not resized), summed in order of j
    (the official forward's order)."""
    out = []
    for i, terms in enumerate(fuse_layers):
        y = None
        for j, f in enumerate(terms):
            t = ys[j] if j == i else f(ys[j])
            if j > i and align_corners is not None:
                t = _resize(t, ys[i].shape[-2:], align_corners)
            y = t if y is None else y + t
        out.append(torch.relu(y))
    return out


def hr_module_align_corners(m: nn.Module) -> Optional[bool]:
    """``align_corners`` of an HR module whose forward resizes its upsampled terms bilinearly to the target
    branch's size; None when its forward does something else."""
    convs = [first_conv(b) for b in m.branches]
    if any(c is None for c in convs):
        return None
    xs = [probe_input(m, c.in_channels, s, seed=i) for i, (c, s) in enumerate(zip(convs, branch_sizes(len(convs))))]
    try:
        reference = list(m(list(xs)))  # the official forward overwrites its list argument's entries
        ys = [b(x) for b, x in zip(m.branches, xs)]
        return _matching(reference, lambda ac: fuse_reference(m.fuse_layers, ys, ac))
    except (RuntimeError, TypeError, ValueError, IndexError):
        return None


def resize_module(r: nn.Module, factor: int) -> Optional[Tuple[str, bool]]:
    """(mode, align_corners) of a parameter-free module that upsamples by ``factor`` exactly as ``F.interpolate`` to
    ``factor`` times the input's size does, nearest or bilinear (``nn.Upsample``, mmsegmentation's ``Upsample``,
    which resizes to ``int(size * scale_factor)``); None for anything else. Read from its ``mode`` and
    ``align_corners``, then checked by running it on a 5x3 map."""
    mode, align_corners = getattr(r, "mode", None), getattr(r, "align_corners", None)
    if mode not in ("nearest", "bilinear") or list(r.parameters()) or list(r.buffers()):
        return None
    align_corners = bool(align_corners) if mode == "bilinear" else False
    t = torch.randn(1, 2, 5, 3, generator=torch.Generator().manual_seed(0))
    extra = {"align_corners": align_corners} if mode == "bilinear" else {}
    try:
        with torch.no_grad():
            out = r(t)
    except (RuntimeError, TypeError, ValueError):
        return None
    expected = F.interpolate(t, size=(5 * factor, 3 * factor), mode=mode, **extra)
    return (mode, align_corners) if isinstance(out, torch.Tensor) and same([out], [expected]) else None


@dataclass
class PostResize:
    """What an HR module's forward does with each upsampled term after the term's own resize module: resizes it
    bilinearly to the target branch's size with ``align_corners`` (mmsegmentation), or, None, adds it as it is."""
    align_corners: Optional[bool]


def hr_module_post_resize(m: nn.Module) -> Optional[PostResize]:
    """How the forward of an HR module whose upsampled terms end in resize modules uses them (``PostResize``),
    found by running it: where the branches do not halve exactly (9x7, 5x4, ...), against the terms resized once
    more bilinearly to the target's size; where they do (16x8, 8x4, ...), against the terms added as they are.
    None when neither matches."""
    convs = [first_conv(b) for b in m.branches]
    if any(c is None for c in convs):
        return None
    exact = [(16 >> k, 8 >> k) for k in range(len(convs))]
    for sizes, candidates in ((branch_sizes(len(convs)), (True, False)), (exact, (None,))):
        xs = [probe_input(m, c.in_channels, s, seed=i) for i, (c, s) in enumerate(zip(convs, sizes))]
        try:
            reference = list(m(list(xs)))
            ys = [b(x) for b, x in zip(m.branches, xs)]
            for align_corners in candidates:
                if same(fuse_reference(m.fuse_layers, ys, align_corners), reference):
                    return PostResize(align_corners)
        except (RuntimeError, TypeError, ValueError, IndexError):
            continue  # a forward that adds the terms as they are fails where the sizes do not halve
    return None


def official_features(net: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """The branch maps out of stage 4 of an HRNet in the official repositories' layout (stem conv1/bn1/conv2/bn2
    with one shared ``relu``, ``layer1``, ``transition1..3`` with None where a branch passes through, ``stage2..4``),
    computed as their forwards do: a transition applies to the last branch of the previous stage."""
    x = net.relu(net.bn2(net.conv2(net.relu(net.bn1(net.conv1(x))))))
    ys = [net.layer1(x)]
    for k in (1, 2, 3):
        transition = getattr(net, f"transition{k}")
        ys = getattr(net, f"stage{k + 1}")([ys[i] if t is None else t(ys[-1]) for i, t in enumerate(transition)])
    return ys


def segmentation_align_corners(net: nn.Module) -> Optional[bool]:
    """``align_corners`` of an official-layout segmentation HRNet whose forward is ``last_layer(cat(branch 0,
    branches 1..3 resized bilinearly to branch 0))``; None when its forward is something else."""
    conv = first_conv(net)
    if conv is None:
        return None
    x = probe_input(net, conv.in_channels, IMAGE, seed=0)
    try:
        reference = [net(x)]
        ys = official_features(net, x)

        def head(ac: bool) -> List[torch.Tensor]:
            size = ys[0].shape[-2:]
            return [net.last_layer(torch.cat([ys[0]] + [_resize(y, size, ac) for y in ys[1:]], 1))]
        return _matching(reference, head)
    except (RuntimeError, TypeError, ValueError, IndexError, AttributeError):
        return None
