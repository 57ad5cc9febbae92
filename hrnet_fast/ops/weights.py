"""conv_bn_act's weight in the form each backend reads, prepared once instead of on every call.

A converted model stores each folded conv weight once, dense in the activations' memory format
(``stored_weight``): cuDNN and ATen read a weight whose layout differs from the input's only after copying it,
which on a GPU is one extra kernel per conv and per call (on HRNet-W18 with channels_last activations, every
3x3 weight: about 270 copies a forward, captured into CUDA graphs too). Each backend may want more than that
(on CPU a layer object keeping oneDNN primitives, ``OnednnConv``, or oneDNN's blocked layout; the Triton conv's
K-major buffer padded to 16 bytes); ``preparer(backend)`` returns the function that builds its form:

    prepare(weight, *, stride, padding, channels_last, x_shape, groups=1) -> Tensor, OnednnConv or None

``weight`` is the stored [Cout, Cin / groups, k, k] weight; ``x_shape`` the input's shape (oneDNN picks its layout
for it); None means "the stored weight as it is". ``PreparedWeight`` holds one conv's prepared form and rebuilds it
when the stored weight is no longer the tensor it was built from (moved, cast, replaced by
``load_state_dict(assign=True)`` or written in place): it compares the weight's data pointer, version counter,
device and dtype on every call rather than relying on hooks that a caller can bypass.
"""
from __future__ import annotations

import functools
import weakref
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Tuple, Union

import torch

from . import cpu_conv
from .tensor_identity import signature, version

if TYPE_CHECKING:
    from .onednn_conv import OnednnConv

Preparer = Callable[..., Optional[Union[torch.Tensor, "OnednnConv"]]]


def stored_weight(weight: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``weight`` dense in the activations' memory format: the layout a converted model stores."""
    return weight.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def dense_in_activation_layout(weight: torch.Tensor, *, stride: int, padding: int, channels_last: bool,
                               x_shape: Sequence[int], groups: int = 1) -> Optional[torch.Tensor]:
    """The stored weight when it is already dense in the activations' layout (None), else such a copy: what
    cuDNN / ATen convolutions read without a per-call copy (``cuda``, ``torch``)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return None if weight.is_contiguous(memory_format=fmt) else weight.contiguous(memory_format=fmt)


@functools.lru_cache(maxsize=None)
def preparer(backend: str) -> Preparer:
    """The function building conv_bn_act's weight for ``backend`` (see the module docstring)."""
    if backend == "cpu":
        return cpu_conv.prepare_weight
    if backend == "triton":
        return _triton_packed
    return dense_in_activation_layout


def _triton_packed(weight: torch.Tensor, **_) -> torch.Tensor:
    """The Triton conv's K-major, 16-byte padded form (a [Cout, Cin, k, k] view the kernel reads directly)."""
    from hrnet_fast_kernels.conv_bn_act import pack_weight
    return pack_weight(weight)


class PreparedWeight:
    """One conv's weight as its backend reads it, built on first use and rebuilt when the stored weight or the
    backend changes. Not part of the module's state: it neither pickles nor deep-copies (an opaque oneDNN
    tensor cannot), and it is rebuilt where it is missing."""

    __slots__ = ("_source", "_key", "_value")

    def __init__(self) -> None:
        self.clear()

    def get(self, backend: str, weight: torch.Tensor, *, stride: int, padding: int, channels_last: bool,
            x_shape: Sequence[int], groups: int = 1) -> Union[torch.Tensor, "OnednnConv"]:
        key = (backend, *signature(weight))
        # The weak reference makes a freed weight whose address a new tensor reuses count as a different one.
        if key != self._key or self._source() is not weight:
            self._value = preparer(backend)(weight, stride=stride, padding=padding, channels_last=channels_last,
                                            x_shape=tuple(x_shape), groups=groups)
            self._source, self._key = weakref.ref(weight), key
        return weight if self._value is None else self._value

    def current(self, weight: torch.Tensor) -> Optional[Union[torch.Tensor, "OnednnConv"]]:
        """The prepared form if it was built from ``weight`` as it is now (``get``'s answer without rebuilding),
        else None. Cheaper than ``get`` for the per-call path: the same tensor object keeps its device, and a new
        storage (``.data =``) or an in-place write changes the pointer or the version."""
        if self._source() is not weight or self._key is None or \
                self._key[1:3] != (weight.data_ptr(), version(weight)):
            return None
        return weight if self._value is None else self._value

    def clear(self) -> None:
        self._source: Callable[[], Optional[torch.Tensor]] = lambda: None
        self._key: Optional[Tuple] = None
        self._value: Optional[torch.Tensor] = None

    def __deepcopy__(self, memo) -> "PreparedWeight":
        return PreparedWeight()

    def __reduce__(self):
        return PreparedWeight, ()
