"""Shapes, devices and helpers shared by the benchmark suites.

``HRNET_FAST_BENCH_TINY=1`` shrinks every shape (and the model to hrnet_w18_small at 64x64) so the whole suite
runs in seconds: the test suite uses it to keep the benchmarks from rotting. Tiny figures mean nothing.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Tuple

import torch

import hrnet_fast.bench as bench

TINY = os.environ.get("HRNET_FAST_BENCH_TINY") == "1"
COMPILE = os.environ.get("HRNET_FAST_BENCH_COMPILE") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"

# Batch 1 is launch-bound, the large batch is throughput; a 2-core CPU gets 8 instead of 32.
BATCHES: Tuple[int, ...] = (1,) if TINY else ((1, 32) if ON_GPU else (1, 8))
DTYPES: Tuple[str, ...] = ("fp32", "fp16") if ON_GPU else ("fp32",)

MODEL = "hrnet_w18_small" if TINY else "hrnet_w18"
INPUT_SIZE = (64, 64) if TINY else (224, 224)
WARMUP_CALLS = 1 if TINY else 3

# HRNet-W18 at 224x224: branch i has 18 * 2**i channels at 56 / 2**i pixels square (the stem's stride is 4).
BRANCH_CHANNELS = (18, 36, 72, 144)
BRANCH_SIZES = (8, 4, 2, 1) if TINY else (56, 28, 14, 7)
STEM_SIZE = 16 if TINY else 112  # the stem's second conv, 64 -> 64 channels, stride 2
# HRNetV2-W18 segmentation at 512x1024: branch i has the same channels at (128 x 256) / 2**i (stride 4 to 32); the
# head ends in 19 classes (Cityscapes).
SEG_SIZES = ((8, 16), (4, 8), (2, 4), (1, 2)) if TINY else ((128, 256), (64, 128), (32, 64), (16, 32))
SEG_CLASSES = 19


def synchronized(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run under inference mode and followed by a device synchronisation, so a GPU benchmark times the
    work and not only its launch."""
    @torch.inference_mode()
    def call() -> object:
        out = fn()
        if ON_GPU:
            torch.cuda.synchronize()
        return out
    return call


def run_benchmark(benchmark, fn: Callable[[], object]) -> object:
    """Warms ``fn`` up (compilation, autotuning, allocator) outside the timing, then benchmarks it."""
    call = synchronized(fn)
    for _ in range(WARMUP_CALLS):
        call()
    return benchmark(call)


def report_rate(benchmark, amount: float, unit: str, scale: float) -> None:
    """Records ``amount`` (bytes or flop) and, when timing ran, ``amount / median / scale`` as ``unit``."""
    benchmark.extra_info["amount"] = amount
    if benchmark.enabled:
        benchmark.extra_info[unit] = amount / benchmark.stats.stats.median / scale


@functools.lru_cache(maxsize=None)
def reference_model(name: str = MODEL) -> torch.nn.Module:
    """The calibrated reference model, built once per run."""
    return bench.reference_model(name, DEVICE, INPUT_SIZE)


@functools.lru_cache(maxsize=None)
def implementation(impl: str, dtype: str, name: str = MODEL) -> bench.Implementation:
    """One implementation of the model (built once per run; each test benchmarks it on its own input)."""
    return bench.build_implementation(impl, reference_model(name), DEVICE, dtype, input_size=INPUT_SIZE)


def dtype_of(name: str) -> torch.dtype:
    return bench.DTYPES[name]
