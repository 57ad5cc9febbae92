"""Builds hrnet_fast and its compiled extension ``hrnet_fast._C`` from csrc/.

CUDAExtension when nvcc and a CUDA build of torch are present (the CUDA kernels compile and link even on a
machine without a GPU; TORCH_CUDA_ARCH_LIST defaults to hrnet_fast.ops.extension.DEFAULT_CUDA_ARCHS, so no GPU
is needed to pick architectures), CppExtension otherwise or with HRNET_FAST_NO_CUDA=1. Sources and flags come
from ``build_config`` in hrnet_fast/ops/extension.py, which the ninja JIT build uses too. ``kernels/`` (Triton)
ships as the package ``hrnet_fast_kernels``. Metadata lives in pyproject.toml.
"""
import importlib.util
import os

from setuptools import find_packages, setup


def _load_extension_module():
    """hrnet_fast/ops/extension.py by path: the package itself cannot be imported before it is built."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hrnet_fast", "ops", "extension.py")
    spec = importlib.util.spec_from_file_location("_hrnet_fast_extension_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_EXT = _load_extension_module()
# Before torch.utils.cpp_extension is imported: it reads CUDA_HOME once, at import.
_WITH_CUDA, _NO_CUDA_REASON = _EXT.cuda_toolchain()

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def extension():
    if not _WITH_CUDA:
        print(f"hrnet_fast: building the CPU-only extension ({_NO_CUDA_REASON})")
    # setuptools wants source paths relative to this directory.
    cfg = _EXT.build_config(_WITH_CUDA, root="")
    args = dict(include_dirs=[os.path.abspath(d) for d in cfg["include_dirs"]], extra_link_args=cfg["ldflags"])
    if _WITH_CUDA:
        return CUDAExtension("hrnet_fast._C", cfg["sources"],
                             extra_compile_args={"cxx": cfg["cxx"], "nvcc": cfg["nvcc"]}, **args)
    return CppExtension("hrnet_fast._C", cfg["sources"], extra_compile_args={"cxx": cfg["cxx"]}, **args)


setup(
    # Every subpackage (models, checkpoints, bench, evaluate ...): a hand-kept list left some out of wheels.
    packages=find_packages(include=["hrnet_fast", "hrnet_fast.*"]) + ["hrnet_fast_kernels"],
    package_dir={"hrnet_fast_kernels": "kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
