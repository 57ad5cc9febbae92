"""Loading the compiled extension (``hrnet_fast._C``, built from csrc/ by setup.py) on first use.

It registers ``torch.ops.hrnet_fast_C.{conv_bn_act,multires_fuse}`` with CPU and (when built with nvcc) CUDA
kernels. Where no prebuilt extension exists, ``build()`` compiles csrc/ with ninja (``torch.utils.cpp_extension
.load``); that is never done implicitly, because it takes minutes.
"""
from __future__ import annotations

import functools
import glob
import os
from typing import Callable, Tuple

import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CSRC = os.path.join(_ROOT, "csrc")
_state = {"error": None, "jit": False}


@functools.lru_cache(maxsize=None)
def load() -> bool:
    """Imports the prebuilt extension; False (with the reason in ``_state``) if there is none."""
    try:
        from hrnet_fast import _C  # noqa: F401
    except ImportError as e:
        _state["error"] = (f"the compiled extension hrnet_fast._C is not built ({e}); install with "
                           f"`pip install --no-build-isolation -e .` or call hrnet_fast.ops.extension.build()")
        return False
    return True


def build(verbose: bool = False, with_cuda: bool | None = None) -> None:
    """JIT-compiles csrc/ with ninja into the torch extensions cache and loads it."""
    from torch.utils.cpp_extension import CUDA_HOME, load as jit_load
    if with_cuda is None:
        with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    sources = sorted(glob.glob(os.path.join(_CSRC, "**", "*.cpp"), recursive=True))
    cflags = ["-O3", "-fopenmp", "-std=c++17"]
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(_CSRC, "**", "*.cu"), recursive=True))
        cflags.append("-DHRNET_FAST_WITH_CUDA")
    jit_load("hrnet_fast_C", sources, extra_cflags=cflags, extra_ldflags=["-fopenmp"],
             extra_cuda_cflags=["-O3", "--use_fast_math", "-std=c++17"], extra_include_paths=[_CSRC],
             is_python_module=False, verbose=verbose)
    _state["jit"] = True


def loaded() -> Tuple[bool, str]:
    if _state["jit"] or load():
        return True, ""
    return False, _state["error"] or "the compiled extension is not built"


def has_kernel(op: str, dispatch_key: str) -> Tuple[bool, str]:
    """(live, reason) for the extension's ``op`` kernel under ``dispatch_key`` ("CPU" or "CUDA")."""
    ok, why = loaded()
    if not ok:
        return False, why
    name = f"hrnet_fast_C::{op}"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch_key):
        return False, f"the extension was built without a {dispatch_key} kernel for {op}"
    return True, ""


def native(op: str) -> Callable:
    """The extension's op, called with the reference signature."""
    fn = getattr(torch.ops.hrnet_fast_C, op)
    if op == "conv_bn_act":
        return lambda x, w, b, *, stride, padding, residual, relu: fn(x, w, b, residual, stride, padding, relu)
    return lambda x, low_res, same_res, *, relu: fn(x, low_res, same_res, relu)
