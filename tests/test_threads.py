"""Thread safety: two threads running one converted model on CPU (different inputs and input sizes, many
iterations each, started together) get exactly the answers one thread gets running the same inputs serially.

Both threads start at once on a freshly converted model, so its first calls (lazy imports, backend resolution
where not already cached, oneDNN primitive creation) race as well. Intra-op threads stay at torch's default:
each Python thread's ops run their own OpenMP teams, as in a threaded server. (The Triton interpreter, a
test-only mode, is left out: it patches triton.language globally while a kernel runs and is not thread-safe.)
"""
from __future__ import annotations

import threading
from typing import Dict, List, Optional

import pytest
import torch

import hrnet_fast
from hrnet_fast.ops.backends import availability
from test_soak import tiny_hrnet

ITERATIONS = 30  # per thread; each thread cycles through its own inputs
JOIN_TIMEOUT_S = 600  # a deadlock fails the test instead of hanging it
SHAPES = {"a": (1, 3, 32, 32), "b": (2, 3, 32, 64)}  # different sizes: shape-dependent state is shared too


def run(model, inputs: List[torch.Tensor]) -> List[List[torch.Tensor]]:
    return [model(inputs[i % len(inputs)]) for i in range(ITERATIONS)]


@pytest.mark.parametrize("backend", ("torch", "cpu"))
def test_two_threads_match_one_thread(backend):
    for op in ("conv_bn_act", "multires_fuse"):
        live, why = availability(backend, op, "cpu")
        if not live:
            pytest.skip(f"backend {backend!r} is not live for {op} on cpu: {why}")
    net = tiny_hrnet()
    gen = torch.Generator().manual_seed(2)
    inputs = {name: [torch.randn(shape, generator=gen) for _ in range(3)] for name, shape in SHAPES.items()}

    concurrent = hrnet_fast.convert(net, backend=backend)
    results: Dict[str, List[List[torch.Tensor]]] = {}
    errors: Dict[str, BaseException] = {}
    start = threading.Barrier(len(inputs))

    def worker(name: str) -> None:
        try:
            start.wait()
            results[name] = run(concurrent, inputs[name])
        except BaseException as e:  # re-raised in the main thread below
            errors[name] = e

    threads = [threading.Thread(target=worker, args=(name,), name=f"forward-{name}") for name in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), f"a thread is still running after {JOIN_TIMEOUT_S} s: deadlock?"
    first_error: Optional[BaseException] = next(iter(errors.values()), None)
    if first_error is not None:
        raise first_error

    serial = hrnet_fast.convert(net, backend=backend)
    for name in inputs:
        expected = run(serial, inputs[name])
        for i, (got, want) in enumerate(zip(results[name], expected)):
            assert len(got) == len(want)
            for level, (g, w) in enumerate(zip(got, want)):
                torch.testing.assert_close(g, w, rtol=0, atol=0,
                                           msg=lambda m: f"thread {name}, iteration {i}, output {level}: {m}")
