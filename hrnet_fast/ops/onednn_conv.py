"""A converted model's CPU convolutions through oneDNN primitives the extension creates once and keeps.

    layer = OnednnConv(weight, stride=1, padding=1)        # weight [Cout, Cin, k, k], float32/bfloat16/float16
    y = layer.run(x, bias, residual, relu=True)             # x channels_last in the weight's dtype; y channels_last
    dw = OnednnConv(dw_weight, 1, 1, groups=c)             # grouped: weight [Cout, Cin / groups, k, k]

Why: ATen's ``torch.ops.mkldnn._convolution_pointwise`` runs the same oneDNN kernels but builds a primitive
descriptor on every call, 20-25 us a call on an AVX512 EPYC (15-26 % of a converted HRNet's forward at batch 1,
``benchmarks/cpu_overhead.py``). ``OnednnConv`` (csrc/cpu/onednn_conv.cpp) creates a primitive per input shape and
epilogue once, with the weight reordered into its layout once, and then only executes it: a 1x1 conv on a 1x1 map
takes 2 us instead of 21.

oneDNN comes from the ``onednn-cpu-gomp`` wheel (oneDNN 3.x on GNU OpenMP, the runtime torch's CPU ops already
run on: one OpenMP runtime per process). Torch ships oneDNN too, but keeps its symbols hidden. Where the extension
was built without it, or ``HRNET_FAST_NO_ONEDNN=1`` is set (``available()`` says why), converted models take
``cpu_conv``'s ATen path, which gives the same answers with the per-call cost above.

``run`` sums a residual in place: into ``residual`` itself when ``residual_is_free`` (the caller holds no other use
of it), else into a copy. It returns None for a call the kept primitives do not take as given, and the caller
takes its general path: x not channels_last, a tensor in another dtype, one the dispatcher would not hand to a
CPU kernel unchanged (a subclass, one needing grad), a dispatch or function mode active, or no oneDNN primitive
for the dtype on this CPU (a reduced precision it does not compute). Shapes that cannot go together raise.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from . import extension


def available() -> Tuple[bool, str]:
    """(live, reason): whether the loaded extension holds the oneDNN convolution and it is not switched off
    (``HRNET_FAST_NO_ONEDNN=1``, read at each call: converted models built afterwards take ATen's path)."""
    if os.environ.get("HRNET_FAST_NO_ONEDNN") == "1":
        return False, "HRNET_FAST_NO_ONEDNN=1"
    mod = extension.module()
    if mod is None:
        return False, extension.loaded()[1]
    if not hasattr(mod, "onednn_conv_new"):
        return False, ("the extension was built without oneDNN: "
                       f"{extension.onednn_toolkit()[1] or 'rebuild it to pick oneDNN up'}")
    return True, f"oneDNN {mod.onednn_version()}"


class OnednnConv:
    """One conv layer's oneDNN primitives (see the module docstring). It holds ``weight`` (not a copy) and reads
    it again only to set up a new input shape: build a new one after the weight changes. Not picklable (oneDNN
    state); converted models rebuild it where it is missing (``hrnet_fast.ops.weights``)."""

    __slots__ = ("_handle", "_run", "dtype")

    def __init__(self, weight: torch.Tensor, stride: int, padding: int, groups: int = 1):
        mod = extension.module()
        self._handle = mod.onednn_conv_new(weight, stride, padding, groups)
        self._run = mod.onednn_conv_run
        self.dtype = weight.dtype

    def run(self, x: torch.Tensor, bias: torch.Tensor, residual: Optional[torch.Tensor], relu: bool,
            residual_is_free: bool = False) -> Optional[torch.Tensor]:
        """relu?(conv2d(x) + bias + residual), channels_last; x [N, Cin, H, W] channels_last and bias [Cout] in the
        weight's dtype, residual [N, Cout, Ho, Wo] in that dtype or None. None: not a call it takes (see above)."""
        return self._run(self._handle, x, bias, residual, relu, residual_is_free)

    @property
    def plans(self) -> int:
        """How many (input shape, epilogue) primitives it keeps now: at most 16, all dropped and made again as
        calls need them past that (a model fed many sizes does not grow without bound)."""
        return extension.module().onednn_conv_plans(self._handle)

    def __reduce__(self):
        raise TypeError("OnednnConv holds oneDNN primitives and cannot be pickled; build it again from the weight")
