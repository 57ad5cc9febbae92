"""Whole-model latency: the eager reference, ``hrnet_fast.convert()`` and the peers a user would pick instead.

One group per (model, precision, batch) holds: reference, converted, channels_last eager, ONNX Runtime and
OpenVINO (CPU, fp32 inputs; OpenVINO at fp32 and at its default precision) and, with ``HRNET_FAST_BENCH_COMPILE=1``, torch.compile with freezing (minutes to compile, so opt-in).
For interleaved timing with spreads and ratios in the seed's table layout, use ``hrnet-fast bench``.
"""
from __future__ import annotations

import pytest
import torch

from hrnet_fast.bench import SPECS, flatten_outputs
from bench_support import (BATCHES, COMPILE, DEVICE, DTYPES, INPUT_SIZE, MODEL, dtype_of, implementation,
                           run_benchmark)

IMPLS = ["reference", "converted", "channels_last", "onnxruntime", "openvino_fp32", "openvino_default"]
if COMPILE:
    IMPLS.append("compile")


def _cells():
    for dtype in DTYPES:
        for batch in BATCHES:
            for impl in IMPLS:
                if SPECS[impl].runs(DEVICE.type, dtype):
                    yield dtype, batch, impl


@pytest.mark.parametrize("dtype,batch,impl", list(_cells()))
def test_model_forward(benchmark, dtype: str, batch: int, impl: str) -> None:
    benchmark.group = f"{MODEL} {dtype} {INPUT_SIZE[0]}x{INPUT_SIZE[1]} N={batch}"
    runner = implementation(impl, dtype)
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, *INPUT_SIZE, generator=gen).to(DEVICE, dtype_of(dtype))
    prepared = runner.prepare(x)
    (y,) = flatten_outputs(run_benchmark(benchmark, lambda: runner.forward(prepared)))
    assert y.shape == (batch, 1000)
    benchmark.extra_info["images/s"] = (batch / benchmark.stats.stats.median if benchmark.enabled
                                        else None)
