"""ONNX translations of the fused ops, for ``torch.onnx.export(..., dynamo=True)``.

Each op becomes the standard ONNX ops its reference composition (``reference.py``) is made of, so any ONNX
runtime runs the exported graph:

    conv_bn_act    Conv(x, weight, bias) [+ Add(residual)] [+ Relu]
    multires_fuse  x + Resize(z_j) to x's size ... + d_k ... [+ Relu]

``register()`` adds them to the exporter's default table, so a plain ``torch.onnx.export(converted, (x,),
dynamo=True)`` finds them. ``import hrnet_fast`` arranges for it to run as soon as torch loads that table's
module (``register_when_exporter_loads``), so importing hrnet_fast does not import onnxscript (~1 s). The table
is the exporter's internal registry, the one torch fills with its own translations; ``translation_table()``
gives the same functions for the public ``custom_translation_table=`` argument, the stable path if those
internals change.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Callable, Dict, Optional

import torch

_OPSET = 18  # Resize with these attributes and Conv: opset 18 (the exporter's default is newer)


def _op():
    from onnxscript import opset18  # imported when an export runs: onnxscript is an export-time dependency
    return opset18


def conv_bn_act(x, weight, bias=None, residual=None, stride: int = 1, padding: int = 0, relu: bool = True,
                backend: str = ""):
    """``relu(conv2d(x, weight, bias) + residual)`` as Conv [+ Add] [+ Relu]; ``backend`` has no meaning in ONNX."""
    op = _op()
    attrs = dict(strides=[stride, stride], pads=[padding] * 4, dilations=[1, 1], group=1)
    y = op.Conv(x, weight, bias, **attrs) if bias is not None else op.Conv(x, weight, **attrs)
    if residual is not None:
        y = op.Add(y, residual)
    return op.Relu(y) if relu else y


def _upsample(op, z, x, mode: str, align_corners: bool):
    """``z`` resized to ``x``'s spatial size as ``F.interpolate(z, size=x.shape[-2:], mode=mode)`` does.

    nearest: PyTorch reads source pixel floor(dst * in / out) (``asymmetric`` + ``floor``; the factor is an
    integer, so out / in is exact). bilinear: source coordinate (dst + 0.5) * in / out - 0.5 (``half_pixel``; not
    ``pytorch_half_pixel``, which maps an output of size 1 to coordinate 0 where PyTorch uses in / 2 - 0.5), or
    dst * (in - 1) / (out - 1) with ``align_corners``. ``sizes`` is x's shape (N and C equal z's), so dynamic
    shapes export too.
    """
    size = op.Shape(x)
    if mode == "nearest":
        return op.Resize(z, None, None, size, mode="nearest", coordinate_transformation_mode="asymmetric",
                         nearest_mode="floor")
    if mode == "bilinear":
        return op.Resize(z, None, None, size, mode="linear",
                         coordinate_transformation_mode="align_corners" if align_corners else "half_pixel")
    raise ValueError(f"multires_fuse has no ONNX translation for mode={mode!r}")


def multires_fuse(x, low_res, same_res, relu: bool = True, mode: str = "nearest", align_corners: bool = False,
                  backend: str = ""):
    """``relu(x + sum_j up(low_res[j]) + sum_k same_res[k])`` as Resize + Add + Relu (``up``: ``mode``)."""
    op = _op()
    y = x
    for z in low_res:
        y = op.Add(y, _upsample(op, z, x, mode, align_corners))
    for d in same_res:
        y = op.Add(y, d)
    return op.Relu(y) if relu else op.Identity(y)


def translation_table() -> Dict[Callable, Callable]:
    """``{torch op overload: ONNX translation}`` for ``torch.onnx.export(..., custom_translation_table=...)``.
    The exporter passes arguments by position, so each translation takes the op schema's arguments in order."""
    return {torch.ops.hrnet_fast.conv_bn_act.default: conv_bn_act,
            torch.ops.hrnet_fast.multires_fuse.default: multires_fuse}


_registered = False


def register() -> Optional[str]:
    """Adds the translations to the ONNX exporter's default table, once; None when done, else why not (no
    onnxscript installed, or an exporter whose internals differ: then pass ``translation_table()``)."""
    global _registered
    if _registered:
        return None
    try:
        import onnxscript
        from torch.onnx._internal.exporter import _registration
        from torch.onnx._internal.exporter._torchlib import _torchlib_registry
    except ImportError as e:
        return f"ONNX export needs onnxscript (pip install onnxscript): {e}"
    try:
        opset = onnxscript.values.Opset(domain="pkg.torch.onnx", version=1)
        for target, fn in translation_table().items():
            _torchlib_registry._registry.append(_registration.OnnxDecompMeta(
                onnx_function=onnxscript.TracedOnnxFunction(opset, fn), fx_target=target, signature=None,
                is_custom=True, opset_introduced=_OPSET))
    except (AttributeError, TypeError) as e:
        return (f"this torch's ONNX exporter has no registry hrnet_fast knows ({type(e).__name__}: {e}); pass "
                f"custom_translation_table=hrnet_fast.ops.onnx_translation.translation_table()")
    _registered = True
    return None


# The exporter's registry module; it imports the torchlib registry the translations are added to.
_EXPORTER_REGISTRY = "torch.onnx._internal.exporter._registration"


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds the exporter's registry module with the normal finders and runs ``register()`` once it is loaded."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _EXPORTER_REGISTRY:
            return None
        sys.meta_path.remove(self)  # one module, once; and the lookup below must not find this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def load_then_register(module):
            load(module)
            register()
        spec.loader.exec_module = load_then_register  # this spec's loader instance, not a class
        return spec


def register_when_exporter_loads() -> None:
    """``register()`` now if torch's ONNX exporter is loaded, else right after it loads."""
    if _EXPORTER_REGISTRY in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
