"""The compiled extension ``hrnet_fast._C``, built from csrc/: loading it, or compiling it on request.

The extension registers ``torch.ops.hrnet_fast_C.{conv_bn_act,multires_fuse}`` with CPU kernels and, when
built with nvcc, CUDA kernels; as a Python module it also holds ``multires_fuse_cpu``, the CPU fusion kernel
callable without the dispatcher (see ``module()``). ``setup.py`` builds it ahead of time (``pip install --no-build-isolation -e .``);
where it was not, ``build()`` compiles the same sources with the same flags with ninja
(``torch.utils.cpp_extension.load``). Nothing compiles implicitly, because a build takes minutes.

This file is also loaded by ``setup.py`` (by path, before the package exists), so it imports nothing from
hrnet_fast: ``build_config`` is the one place the sources and flags are written down.
"""
from __future__ import annotations

import functools
import glob
import os
import shlex
import shutil
import struct
import sys
import tempfile
from types import ModuleType
from typing import Callable, Dict, List, Optional, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIBRARY = "hrnet_fast_C"  # the torch.library namespace the extension registers
OPS = ("conv_bn_act", "multires_fuse")
# Compiled GPU architectures when TORCH_CUDA_ARCH_LIST is unset: A100-class and H100-class binaries, plus PTX the
# driver can compile for newer GPUs. Setting it means no GPU is needed to pick architectures.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"

_state: Dict[str, object] = {"error": None, "jit": None}  # jit: the module build() loaded


def find_cuda_home() -> Optional[str]:
    """The CUDA toolkit to build with: $CUDA_HOME (or $CUDA_PATH) when set, else the toolkit of the nvcc on PATH,
    else /usr/local/cuda; None when that directory has no nvcc and CUDA headers.

    torch guesses the toolkit from ``which nvcc`` too, but takes two directories up from it, which is wrong
    when nvcc on PATH is a wrapper script (e.g. /usr/local/bin/nvcc).
    """
    def is_toolkit(path: Optional[str]) -> bool:
        return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and \
            os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))

    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:
        return explicit if is_toolkit(explicit) else None
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates.append("/usr/local/cuda")
    return next((c for c in candidates if is_toolkit(c)), None)


def cuda_toolkit() -> Tuple[Optional[str], str]:
    """(toolkit directory, reason): where the CUDA kernels can be compiled from here (a CUDA build of torch and
    a toolkit with nvcc and headers), or (None, why not). Changes nothing."""
    if os.environ.get("HRNET_FAST_NO_CUDA") == "1":
        return None, "HRNET_FAST_NO_CUDA=1"
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is not a CUDA build"
    home = find_cuda_home()
    if home is None:
        return None, "no CUDA toolkit found (set CUDA_HOME to the directory holding bin/nvcc and include/)"
    return home, ""


def cuda_toolchain() -> Tuple[bool, str]:
    """(usable, reason): ``cuda_toolkit()``, made ready for torch.utils.cpp_extension to build with.

    Sets CUDA_HOME (if unset) so torch.utils.cpp_extension, imported afterwards, uses that toolkit, and defaults
    TORCH_CUDA_ARCH_LIST to DEFAULT_CUDA_ARCHS so no GPU is needed to pick architectures. Not usable when
    torch.utils.cpp_extension was already imported with another toolkit (it reads CUDA_HOME once).
    """
    home, why = cuda_toolkit()
    if home is None:
        return False, why
    loaded = sys.modules.get("torch.utils.cpp_extension")
    if loaded is not None and loaded.CUDA_HOME != home:
        return False, (f"torch.utils.cpp_extension was imported with CUDA_HOME={loaded.CUDA_HOME}, not {home}; "
                       f"set CUDA_HOME={home} before starting Python")
    os.environ.setdefault("CUDA_HOME", home)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    return True, ""


def onednn_toolkit() -> Tuple[Optional[str], str]:
    """(prefix, reason): where oneDNN's headers and library are (``include/oneapi/dnnl/dnnl.hpp`` and
    ``lib/libdnnl.so`` under $HRNET_FAST_ONEDNN_ROOT, else under this Python's prefix, where the
    ``onednn-devel-cpu-gomp`` and ``onednn-cpu-gomp`` wheels install them), or (None, why not). oneDNN 3.x built on
    GNU OpenMP: the runtime torch's CPU ops use, so one process never holds two OpenMP runtimes."""
    if os.environ.get("HRNET_FAST_NO_ONEDNN") == "1":
        return None, "HRNET_FAST_NO_ONEDNN=1"
    prefix = os.environ.get("HRNET_FAST_ONEDNN_ROOT") or sys.prefix
    header = os.path.join(prefix, "include", "oneapi", "dnnl", "dnnl_version.h")
    if not os.path.isfile(header) or not glob.glob(os.path.join(prefix, "lib", "libdnnl.so*")):
        return None, (f"no oneDNN headers and library under {prefix} (pip install onednn-devel-cpu-gomp "
                      f"onednn-cpu-gomp, or set HRNET_FAST_ONEDNN_ROOT)")
    with open(header) as f:
        major = next((line.split()[2] for line in f if line.startswith("#define DNNL_VERSION_MAJOR")), "?")
    if major != "3":
        return None, f"oneDNN under {prefix} is version {major}.x; the extension is written for 3.x"
    return prefix, ""


def build_config(with_cuda: bool, root: str = ROOT) -> Dict[str, List[str]]:
    """Sources, include directories and compiler / linker flags of the extension, paths under ``root``.

    C++ sources are csrc/**/*.cpp; with ``with_cuda`` also csrc/**/*.cu and the define that registers the CUDA
    kernels; where ``onednn_toolkit()`` finds oneDNN, the define that compiles the CPU convolution keeping its
    oneDNN primitives (csrc/cpu/onednn_conv.cpp), linked with an rpath to the library. OpenMP is what ``at::parallel_for`` runs on in the CPU kernels (without ``-fopenmp`` they run on
    one thread). No ``--use_fast_math``: the kernels are memory-bound, and flushing denormals would make results
    differ from PyTorch's.
    """
    csrc = os.path.join(root, "csrc")

    def sources(ext: str) -> List[str]:
        return sorted(os.path.join(csrc, p) for p in glob.glob(f"**/*.{ext}", root_dir=csrc, recursive=True))

    defines = ["-DHRNET_FAST_WITH_CUDA"] if with_cuda else []
    onednn, _ = onednn_toolkit()
    include_dirs, ldflags = [csrc], ["-fopenmp"]
    if onednn is not None:
        # Its headers ahead of the oneDNN headers torch ships (another version, whose library torch keeps hidden).
        include_dirs.insert(0, os.path.join(onednn, "include"))
        lib = os.path.join(onednn, "lib")
        ldflags += [f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}"]
        defines = defines + ["-DHRNET_FAST_WITH_ONEDNN"]
    return {
        "sources": sources("cpp") + (sources("cu") if with_cuda else []),
        "include_dirs": include_dirs,
        "cxx": ["-O3", "-fopenmp"] + defines,
        "nvcc": ["-O3", "-lineinfo"] + defines,
        "ldflags": ldflags,
    }


def ninja_variable(build_ninja: str, name: str) -> List[str]:
    """The flags a build.ninja file assigns to the variable ``name`` (``name = ...`` at the top level), split as
    the shell would; [] when the file does not set it. torch writes flags unescaped, one line per variable."""
    prefix = f"{name} = "
    line = next((line for line in build_ninja.splitlines() if line.startswith(prefix) or line == name + " ="), None)
    return [] if line is None else shlex.split(line[len(prefix):])


def nvcc_flags(cpp_extension: ModuleType, arch: str = "9.0") -> List[str]:
    """Every nvcc flag torch's own extension build (``cpp_extension``: the module ``torch.utils.cpp_extension``
    of the torch to build against) puts on the command line of csrc/**/*.cu for GPU ``arch`` (a compute capability
    like "9.0"), the extension's ``build_config`` flags included: the C++ standard, COMMON_NVCC_FLAGS, the
    ``-gencode`` arch flags, the defines and the include directories (torch's headers under its ``_TORCH_PATH``).

    Torch keeps the standard (c++17 up to 2.11, c++20 since) as a literal inside the function that writes the
    ninja file, so the flags are read from a build.ninja that function writes into a temporary directory: the same
    line ``build()`` compiles with, and the same ingredients setup.py's ``BuildExtension`` uses. Needs CUDA_HOME
    set before ``cpp_extension`` was imported (``cuda_toolchain()``); nothing is compiled.
    """
    cfg = build_config(with_cuda=True)
    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch  # one binary: torch's arch flags, from its own arch-list parsing
    try:
        with tempfile.TemporaryDirectory(prefix="hrnet_fast_flags_") as tmp:
            path = os.path.join(tmp, "build.ninja")
            cpp_extension._write_ninja_file_to_build_library(
                path, "_C", [s for s in cfg["sources"] if s.endswith(".cu")], cfg["cxx"], cfg["nvcc"], [],
                cfg["ldflags"], cfg["include_dirs"], True, False, False)  # with_cuda, with_sycl, is_standalone
            with open(path) as f:
                text = f.read()
    finally:
        if saved is None:
            del os.environ["TORCH_CUDA_ARCH_LIST"]
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved
    flags = ninja_variable(text, "cuda_cflags") + ninja_variable(text, "cuda_post_cflags")
    if not any(flag.startswith("-std=") for flag in flags):
        raise RuntimeError(f"torch {getattr(cpp_extension, '__file__', cpp_extension)} wrote no -std= flag for nvcc "
                           f"into build.ninja; its build helpers changed:\n{text}")
    return flags


@functools.lru_cache(maxsize=None)
def _import_prebuilt() -> Optional[ModuleType]:
    try:
        from hrnet_fast import _C  # importing registers torch.ops.hrnet_fast_C.*
    except ImportError as e:
        _state["error"] = (f"the compiled extension hrnet_fast._C is not built ({e}); install with "
                           f"`pip install --no-build-isolation -e .` or call hrnet_fast.ops.extension.build()")
        return None
    return _C


def build(verbose: bool = False, with_cuda: Optional[bool] = None) -> ModuleType:
    """JIT-compiles csrc/ with ninja into torch's extensions cache, loads it, and returns the module.

    Use it where ``hrnet_fast._C`` was not built by ``pip install``; a prebuilt extension is preferred when
    both exist (loading both would register the ops twice, so this refuses).
    """
    if _import_prebuilt() is not None:
        raise RuntimeError("hrnet_fast._C is already built and loaded; build() is only for installs without it")
    cuda_ok, why = cuda_toolchain()
    if with_cuda is None:
        with_cuda = cuda_ok
    elif with_cuda and not cuda_ok:
        raise RuntimeError(f"cannot build the CUDA kernels: {why}")
    cfg = build_config(with_cuda)
    from torch.utils.cpp_extension import load as jit_load  # after cuda_toolchain() has set CUDA_HOME
    mod = jit_load(LIBRARY, cfg["sources"], extra_cflags=cfg["cxx"], extra_cuda_cflags=cfg["nvcc"],
                   extra_ldflags=cfg["ldflags"], extra_include_paths=cfg["include_dirs"],
                   is_python_module=True, verbose=verbose)
    _state["jit"] = mod
    return mod


def module() -> Optional[ModuleType]:
    """The loaded extension module (prebuilt ``hrnet_fast._C`` or the one ``build()`` loaded), or None."""
    return _state["jit"] or _import_prebuilt()


def loaded() -> Tuple[bool, str]:
    """(loaded, reason): whether the extension's ops are registered in this process."""
    if module() is not None:
        return True, ""
    return False, _state["error"] or "the compiled extension is not built"


def has_kernel(op: str, dispatch_key: str) -> Tuple[bool, str]:
    """(live, reason) for the extension's ``op`` kernel under ``dispatch_key`` ("CPU" or "CUDA")."""
    ok, why = loaded()
    if not ok:
        return False, why
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"{LIBRARY}::{op}", dispatch_key):
        return False, f"the extension was built without a {dispatch_key} kernel for {op}"
    return True, ""


@functools.lru_cache(maxsize=None)
def native(op: str) -> Callable:
    """The extension's ``op``, called with the reference signature (``reference.py``)."""
    if op not in OPS:
        raise ValueError(f"the extension has no op {op!r}; it has {', '.join(OPS)}")
    ok, why = loaded()  # loads it: a graph deserialised in a fresh process reaches here before anything else did
    if not ok:
        raise RuntimeError(why)
    fn = getattr(getattr(torch.ops, LIBRARY), op)
    if op == "conv_bn_act":
        return lambda x, w, b, *, stride, padding, residual, relu: fn(x, w, b, residual, stride, padding, relu)
    return lambda x, low_res, same_res, *, relu, mode, align_corners: fn(x, list(low_res), list(same_res), relu, mode,
                                                                         align_corners)


def _elf_section(data: bytes, name: str) -> Optional[bytes]:
    """The bytes of section ``name`` of a 64-bit little-endian ELF file, or None."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx][4]
    for name_off, _, _, _, offset, size in headers:
        end = data.index(b"\0", names + name_off)
        if data[names + name_off:end].decode() == name:
            return data[offset:offset + size]
    return None


def fatbin_archs(path: str) -> List[str]:
    """GPU code in a shared library's CUDA fat binaries: ``sm_XY`` for each compiled binary, ``compute_XY`` for
    each PTX (which the driver compiles for newer GPUs). Empty when the library has no CUDA code.

    Format (nvcc's fatbin, as cuobjdump reads it): containers start with magic 0xBA55ED50, a u16 version, a u16
    header size and a u64 payload size; each entry has a u16 kind (1 PTX, 2 ELF), a u32 header size, a u64
    payload size and the u32 architecture (e.g. 90) at byte 28.
    """
    with open(path, "rb") as f:
        section = _elf_section(f.read(), ".nv_fatbin")
    archs: List[str] = []
    pos = 0
    while section is not None and pos + 16 <= len(section):
        magic, _, header, size = struct.unpack_from("<IHHQ", section, pos)
        if magic != 0xBA55ED50:
            pos += 8  # containers are 8-byte aligned
            continue
        entry, end = pos + header, pos + header + size
        while entry + 32 <= end:
            kind, _, entry_header, entry_size = struct.unpack_from("<HHIQ", section, entry)
            arch, = struct.unpack_from("<I", section, entry + 28)
            name = {1: f"compute_{arch}", 2: f"sm_{arch}"}.get(kind)
            if name is not None and name not in archs:
                archs.append(name)
            entry += entry_header + entry_size
        pos = end
    return archs
