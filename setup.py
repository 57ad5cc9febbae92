"""Builds hrnet_fast and its compiled extension ``hrnet_fast._C`` from csrc/.

CUDAExtension when nvcc and a CUDA build of torch are present (the CUDA kernels compile and link even on a
machine without a GPU), CppExtension otherwise. ``kernels/`` (Triton) ships as the subpackage
``hrnet_fast.kernels``. Metadata lives in pyproject.toml.
"""
import glob
import os

from setuptools import setup

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch


def extension():
    cpp = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cu = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    cxx = ["-O3", "-fopenmp", "-std=c++17"]
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and os.environ.get("HRNET_FAST_NO_CUDA") != "1"
    if with_cuda:
        arch = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        nvcc = ["-O3", "--use_fast_math", "-std=c++17", "-lineinfo"]
        return CUDAExtension("hrnet_fast._C", cpp + cu, include_dirs=[os.path.abspath("csrc")],
                             extra_compile_args={"cxx": cxx + ["-DHRNET_FAST_WITH_CUDA"], "nvcc": nvcc},
                             extra_link_args=["-fopenmp"])
    return CppExtension("hrnet_fast._C", cpp, include_dirs=[os.path.abspath("csrc")],
                        extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])


setup(
    packages=["hrnet_fast", "hrnet_fast.ops", "hrnet_fast.convert", "hrnet_fast.kernels"],
    package_dir={"hrnet_fast.kernels": "kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
