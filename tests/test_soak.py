"""Soak: thousands of forwards of a converted HRNet with resident memory flat after warm-up, on CPU and (marked
``gpu``) as CUDA-graph replays.

The model is a tiny HRNet: the real structure (stem, Bottleneck layer1, transitions, 2/3/4-branch HR modules with
their multi-resolution fusion) with 4-32 channel branches and no classification head, at the smallest input
HRNet takes (32x32), so a forward costs a few milliseconds (converted hrnet_w18_small: ~65 ms per 32x32 forward on
one core of the shared 2-core CI machine, over ten minutes for 10,000). The default run does 2,000 forwards; the
full one 10,000 (about 70 s):

    HRNET_FAST_SOAK=full .venv/bin/python -m pytest tests/test_soak.py -q -rA -s -p no:cacheprovider

Resident memory is read from /proc/self/statm (psutil where there is no /proc). The figures are printed (``-s``)
and attached to the test report as junit properties (``record_property``).
"""
from __future__ import annotations

import ctypes
import gc
import os
import time
from typing import Callable, Dict, List

import pytest
import torch

import hrnet_fast
from hrnet_fast.models import HighResolutionNet

COUNTS = {"ci": 2000, "full": 10000}
WARMUP = 200
INPUT = (1, 3, 32, 32)
# Resident memory may grow this much between the end of the warm-up and the last forward. Allocator and
# page-cache noise stay under 1 MiB here; a leak of 512 bytes per forward crosses it at the full count.
RSS_GROWTH_BOUND = 4 * 2 ** 20
CUDA_GROWTH_BOUND = 2 ** 20  # bytes held by torch's CUDA allocator


def soak_count() -> int:
    name = os.environ.get("HRNET_FAST_SOAK", "ci")
    if name not in COUNTS:
        raise ValueError(f"HRNET_FAST_SOAK={name!r}: choose one of {', '.join(COUNTS)}")
    return COUNTS[name]


def _stage(blocks: int, channels: List[int], block: str = "BASIC") -> Dict:
    return dict(num_modules=1, num_branches=len(channels), block_type=block, num_blocks=(blocks,) * len(channels),
                num_channels=tuple(channels))


TINY_CFG = dict(stem_width=8, stage1=_stage(1, [8], "BOTTLENECK"), stage2=_stage(1, [4, 8]),
                stage3=_stage(1, [4, 8, 16]), stage4=_stage(1, [4, 8, 16, 32]))


def tiny_hrnet() -> HighResolutionNet:
    """A tiny HRNet returning its stem and four raw branch outputs, BN calibrated so activations are O(1)."""
    torch.manual_seed(0)
    net = HighResolutionNet(TINY_CFG, features_only=True, feature_location="")
    return hrnet_fast.calibrate_bn(net, input_size=INPUT[2:], steps=2, batch=2)


def rss_bytes() -> int:
    """This process's resident set size."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except FileNotFoundError:
        psutil = pytest.importorskip("psutil", reason="no /proc/self/statm and no psutil to read resident memory")
        return psutil.Process().memory_info().rss


def settle() -> None:
    """Frees garbage and hands freed heap pages back to the OS (glibc's malloc_trim), so that resident memory
    measures live memory: otherwise a leak first refills pages freed earlier, which are still resident, and shows
    late or not at all. Elsewhere only the garbage collection runs."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def soak(forward: Callable[[torch.Tensor], List[torch.Tensor]], inputs: List[torch.Tensor], count: int,
         memory: Callable[[], int]) -> Dict[str, object]:
    """Warms up, then runs ``count`` forwards cycling through ``inputs``; returns memory after the warm-up, ten
    samples along the way, at the end, and the time per forward. Checks each input's outputs at the end are
    bit-identical to its outputs at the start."""
    first = [forward(x) for x in inputs]
    for i in range(WARMUP):
        forward(inputs[i % len(inputs)])
    settle()
    start_memory, samples = memory(), []
    start = time.perf_counter()
    for i in range(count):
        forward(inputs[i % len(inputs)])
        if (i + 1) % (count // 10) == 0:
            samples.append(memory())
    seconds = time.perf_counter() - start
    settle()
    end_memory = memory()
    for x, before in zip(inputs, first):
        after = forward(x)
        assert all(torch.equal(a, b) for a, b in zip(after, before)), "outputs drifted during the soak"
    return dict(forwards=count, after_warmup=start_memory, end=end_memory, growth=end_memory - start_memory,
                samples=samples, ms_per_forward=round(1e3 * seconds / count, 3))


def report(record_property, label: str, figures: Dict[str, object]) -> None:
    mib = lambda b: f"{b / 2 ** 20:.2f} MiB"  # noqa: E731
    print(f"\n{label}: {figures['forwards']} forwards, {figures['ms_per_forward']} ms each; memory after warm-up "
          f"{mib(figures['after_warmup'])}, at the end {mib(figures['end'])}, growth {mib(figures['growth'])}; "
          f"samples {[mib(s) for s in figures['samples']]}")
    for key, value in figures.items():
        record_property(f"{label}_{key}", value)


@pytest.fixture
def one_thread():
    """One intra-op thread: the soak is about memory, and on a shared 2-core machine OpenMP threads spinning
    against other processes make a forward ten times slower. tests/test_threads.py covers concurrency."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_rss_measurement_sees_a_leak():
    """The detector can fail: keeping 16 MiB of tensors alive shows up in resident memory."""
    settle()
    before = rss_bytes()
    kept = [torch.ones(2 ** 16) for _ in range(64)]  # 64 x 256 KiB, written so the pages are resident
    assert rss_bytes() - before > 12 * 2 ** 20
    del kept


def test_soak_catches_a_leaking_forward():
    """The harness and bound can fail: a forward that keeps 4 KiB per call alive crosses the bound."""
    kept = []

    def leaking_forward(x: torch.Tensor) -> List[torch.Tensor]:
        kept.append(torch.ones(1024))  # 4 KiB
        return [x * 2]

    figures = soak(leaking_forward, [torch.ones(8)], soak_count(), rss_bytes)
    assert figures["growth"] > RSS_GROWTH_BOUND, figures


def test_cpu_forwards_keep_memory_flat(one_thread, record_property):
    fast = hrnet_fast.convert(tiny_hrnet())
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(INPUT, generator=gen) for _ in range(4)]
    assert all(torch.isfinite(f).all() for f in fast(inputs[0]))
    figures = soak(fast, inputs, soak_count(), rss_bytes)
    report(record_property, "cpu_rss", figures)
    assert figures["growth"] < RSS_GROWTH_BOUND, f"resident memory grew {figures['growth']} bytes"


@pytest.mark.gpu
def test_cuda_graph_replays_keep_memory_flat(record_property):
    fast = hrnet_fast.convert(tiny_hrnet().cuda(), cuda_graph=True)
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(INPUT, generator=gen).cuda() for _ in range(4)]

    def forward(x: torch.Tensor) -> List[torch.Tensor]:
        out = fast(x)
        torch.cuda.synchronize()
        return out

    gpu = soak(forward, inputs, soak_count(), torch.cuda.memory_allocated)
    assert len(fast.graphs) == 1, "one input shape must give one captured graph"
    report(record_property, "cuda_graph_allocated", gpu)
    assert gpu["growth"] < CUDA_GROWTH_BOUND, f"CUDA memory grew {gpu['growth']} bytes"
    host = soak(forward, inputs, soak_count(), rss_bytes)
    report(record_property, "cuda_graph_rss", host)
    assert host["growth"] < RSS_GROWTH_BOUND, f"resident memory grew {host['growth']} bytes"
