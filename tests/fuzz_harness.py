"""What the property-based op tests (tests/test_fuzz_conv_bn_act.py, tests/test_fuzz_multires_fuse.py) share:
the backends and devices they run on, random inputs in every memory layout, the per-case cost bounds and the
runner. tests/test_ops_special_values.py runs on the same targets.

Targets: torch, cpu and triton (interpreted) on CPU tensors; cuda and triton on a GPU (marked ``gpu``). Backends
that are not live skip with the dispatcher's reason. Memory layouts, per input: contiguous, channels_last, a
strided slice, the transpose of a tensor made the other way round (``t.transpose(2, 3)``, still an NCHW tensor in
meaning), or a batch broadcast with stride 0. Sizes are bounded per case by a cost budget, tighter for the
interpreter (see ``NATIVE`` and ``INTERPRETED``), which also cannot run bfloat16 convolutions (refused with
NotImplementedError, tested in test_conv_bn_act.py). The runner's watchdog turns a hang into a failure with every
thread's traceback. Case counts per profile: tests/fuzz_profiles.py. The long run (1,000 cases per op and
backend):

    HRNET_FAST_FUZZ=long .venv/bin/python -m pytest tests/test_fuzz_conv_bn_act.py tests/test_fuzz_multires_fuse.py \
        tests/test_ops_special_values.py -q -rA -s -p no:cacheprovider

It prints, and records as junit properties, the number of cases per op and backend, their outcomes and the time.
"""
from __future__ import annotations

import collections
import faulthandler
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz_profiles import fuzz_settings
from hrnet_fast.ops.backends import availability

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed", "broadcast")
VECTOR_LAYOUTS = ("contiguous", "sliced", "broadcast")
WATCHDOG_S = 300  # one case; the slowest interpreted case takes a few seconds

# (backend, device type); triton on CPU tensors runs through the interpreter (tests/conftest.py).
TARGETS = (
    pytest.param("torch", "cpu", id="torch-cpu"),
    pytest.param("cpu", "cpu", id="cpu-cpu"),
    pytest.param("triton", "cpu", id="triton-interpreted"),
    pytest.param("cuda", "cuda", id="cuda-gpu", marks=pytest.mark.gpu),
    pytest.param("triton", "cuda", id="triton-gpu", marks=pytest.mark.gpu),
)


def live_device(backend: str, op: str, device_type: str) -> torch.device:
    """The device to fuzz ``backend`` on; skips with the dispatcher's reason when it is not live there."""
    live, why = availability(backend, op, device_type)
    if not live:
        pytest.skip(f"backend {backend!r} is not live for {op} on {device_type}: {why}")
    return torch.device(device_type)


def is_interpreted(backend: str, device: torch.device) -> bool:
    return backend == "triton" and device.type == "cpu"


# ----------------------------------------------------------------------------------------------- inputs
def make_tensor(shape: Sequence[int], dtype: torch.dtype, layout: str, gen: torch.Generator, device: torch.device,
                scale: float = 1.0) -> torch.Tensor:
    """A random [N, C, H, W] tensor in ``layout``. The base is moved and cast first and the view taken last, since
    ``.to()`` makes a copy of a tensor that is not dense, which would lose the layout."""
    n, c, h, w = shape
    base_shape = {"contiguous": (n, c, h, w), "channels_last": (n, c, h, w), "sliced": (n, 2 * c, h + 1, 2 * w),
                  "transposed": (n, c, w, h), "broadcast": (1, c, h, w)}[layout]
    base = (torch.randn(base_shape, generator=gen) * scale).to(device=device, dtype=dtype)
    if layout == "channels_last":
        return base.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        return base[:, ::2, 1:, ::2]
    if layout == "transposed":
        return base.transpose(2, 3)
    if layout == "broadcast":
        return base.expand(n, c, h, w)
    return base


def make_vector(size: int, dtype: torch.dtype, layout: str, gen: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """A random [size] tensor: contiguous, every other element of a longer one, or one value broadcast."""
    if layout == "sliced":
        return torch.randn(2 * size, generator=gen).to(device=device, dtype=dtype)[::2]
    if layout == "broadcast":
        return torch.randn(1, generator=gen).to(device=device, dtype=dtype).expand(size)
    return torch.randn(size, generator=gen).to(device=device, dtype=dtype)


def documented_format(x: torch.Tensor) -> torch.memory_format:
    """The ops' contract: the output is channels_last when x is (and is not also plain NCHW), else NCHW."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def other_float(dtype: torch.dtype) -> torch.dtype:
    return torch.float16 if dtype != torch.float16 else torch.float32


def assert_fresh_output(y: torch.Tensor, inputs: Sequence[Optional[torch.Tensor]]) -> None:
    """The op returns a new tensor: it never aliases (writes into, or hands back) one of its inputs."""
    if y.numel() == 0:
        return
    ptr = y.untyped_storage().data_ptr()
    for t in inputs:
        if t is not None and t.numel():
            assert t.untyped_storage().data_ptr() != ptr, "the output shares memory with an input"


# ------------------------------------------------------------------------------------------------ cost bounds
@dataclass(frozen=True)
class Limits:
    """Largest sizes drawn, and a per-case cost budget that sizes are halved down to (in a drawn order, so that
    either large channel counts or large spatial sizes survive); the dtypes convolutions are drawn in."""
    conv_dtypes: Tuple[torch.dtype, ...]
    batch: int
    channels: int
    size: int
    conv_cost: Callable[..., float]
    conv_budget: float
    fuse_cost: Callable[..., float]
    fuse_budget: float


def _conv_macs(n: int, cin: int, cout: int, ho: int, wo: int, k: int) -> float:
    # The float64 reference dominates the time of a native case.
    return n * cin * cout * k * k * max(ho, 0) * max(wo, 0)


def _conv_interpreter_steps(n: int, cin: int, cout: int, ho: int, wo: int, k: int) -> float:
    # The interpreter's one tile (kernels/conv_bn_act.py): BLOCK_M=128, BLOCK_N=64, BLOCK_K=32; each program
    # runs k*k*ceil(cin/32) dot steps in Python, a few ms each.
    return math.ceil(n * max(ho, 0) * max(wo, 0) / 128) * math.ceil(cout / 64) * k * k * math.ceil(cin / 32)


def _fuse_elements(n: int, c: int, h: int, w: int, terms: int) -> float:
    return n * c * h * w * (1 + terms)


def _fuse_interpreter_programs(n: int, c: int, h: int, w: int, terms: int) -> float:
    # The interpreter's one block (kernels/multires_fuse.py): BLOCK=4096 output elements per program.
    return math.ceil(n * c * h * w / 4096)


NATIVE = Limits(conv_dtypes=DTYPES, batch=5, channels=160, size=70, conv_cost=_conv_macs, conv_budget=8e6,
                fuse_cost=_fuse_elements, fuse_budget=2e6)
INTERPRETED = Limits(conv_dtypes=(torch.float32, torch.float16), batch=5, channels=160, size=70,
                     conv_cost=_conv_interpreter_steps, conv_budget=36,
                     fuse_cost=_fuse_interpreter_programs, fuse_budget=4)


def fit_to_budget(dims: Dict[str, int], order: Sequence[str], cost: Callable[[Dict[str, int]], float],
                  budget: float) -> Dict[str, int]:
    """Halves the dimensions in ``order`` (each down to 1, a batch of 0 stays 0) until ``cost(dims) <= budget``."""
    dims = dict(dims)
    for key in order:
        while cost(dims) > budget and dims[key] > 1:
            dims[key] //= 2
    assert cost(dims) <= budget, f"{dims} cost {cost(dims)} > {budget}"
    return dims


# ---------------------------------------------------------------------------------------------------- runner
def run_fuzz(label: str, cases: st.SearchStrategy, check: Callable[..., str], backend: str, device: torch.device,
             record_property: Callable[[str, object], None]) -> None:
    """Runs ``check`` on the active profile's cases; prints and records how many ran, their outcomes and the time.

    A case that runs past ``WATCHDOG_S`` dumps every thread's traceback and ends the process: a hang fails loudly.
    """
    outcomes: collections.Counter = collections.Counter()

    @fuzz_settings(is_interpreted(backend, device))
    @given(case=cases)
    def property_holds(case) -> None:
        faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
        try:
            outcomes[check(case, backend, device)] += 1
        finally:
            faulthandler.cancel_dump_traceback_later()

    start = time.perf_counter()
    property_holds()
    seconds = time.perf_counter() - start
    total = sum(outcomes.values())
    record_property("fuzz_cases", total)
    record_property("fuzz_outcomes", dict(outcomes))
    record_property("fuzz_seconds", round(seconds, 1))
    print(f"\n{label}: {total} cases in {seconds:.1f} s; outcomes {dict(sorted(outcomes.items()))}")
    assert any(o.startswith("matched") for o in outcomes), f"{label}: no case ran the op to completion"
