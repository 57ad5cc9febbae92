"""CUDA-graph replay of converted models (hrnet_fast/convert/cuda_graph.py): the signature that tells when the
model's tensors moved or changed, the cache's rules driven by it (checked here with a stand-in graph on CPU), and
on a GPU the real capture: recapture after moves and loads, thread-local capture, the tensors' device."""
from __future__ import annotations

import contextlib
import copy
import threading

import pytest
import torch
import torch.nn as nn

import hrnet_fast
from hrnet_fast.convert import cuda_graph
from hrnet_fast.ops import extension


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()


@pytest.fixture(params=["native", "python"])
def signature(request, monkeypatch):
    if request.param == "native":
        if getattr(extension.module(), "tensor_signature", None) is None:
            pytest.skip("the compiled extension is not built")
    else:
        monkeypatch.setattr(extension, "module", lambda: None)
    return lambda m: cuda_graph.signature(cuda_graph.tensor_dicts(m))


def test_signature_changes_exactly_when_a_tensor_changes(signature):
    m = small_model()
    s = signature(m)
    assert signature(m) == s
    m.to(torch.float32)  # a no-op move keeps every tensor
    assert signature(m) == s
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    m.load_state_dict(sd)  # in place: same pointers, new versions
    s2 = signature(m)
    assert s2 != s
    m.load_state_dict({**sd, "0.weight": sd["0.weight"] * 2}, assign=True)  # one tensor replaced
    s3 = signature(m)
    assert s3 != s2
    m.double()
    assert signature(m) != s3


def test_signature_rejects_what_is_not_a_tensor_dict():
    native = getattr(extension.module(), "tensor_signature", None)
    if native is None:
        pytest.skip("the compiled extension is not built")
    with pytest.raises(TypeError, match="list of dicts"):
        native([1])
    with pytest.raises(TypeError, match="neither a tensor nor None"):
        native([{"w": 3}])
    assert native([{"w": None}]) == bytes(32)


class FakeGraph:
    """A captured graph stand-in: replay() recomputes the captured function into the static output."""

    def __init__(self, fn, static_in):
        self.fn, self.static_in = fn, static_in
        self.static_out = fn(static_in)

    def replay(self):
        self.static_out.copy_(self.fn(self.static_in))


@pytest.fixture
def cache(monkeypatch):
    """A GraphCache over a small CPU model whose captures are FakeGraphs (counted)."""
    model = small_model()
    captures = []

    def capture(self, x):
        static_in = x.clone()
        graph = FakeGraph(self.fn, static_in)
        captures.append(graph)
        return graph, static_in, graph.static_out

    monkeypatch.setattr(cuda_graph.GraphCache, "_capture", capture)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    gc = cuda_graph.GraphCache(lambda x: model(x), max_graphs=2, module=model)
    return gc, model, captures


def test_graphs_are_reused_until_the_model_changes(cache):
    gc, model, captures = cache
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        y = gc(x)
        torch.testing.assert_close(gc(x), y, rtol=0, atol=0)
        assert len(captures) == 1 and len(gc) == 1
        model.load_state_dict({k: v * 2 if k == "0.weight" else v for k, v in model.state_dict().items()})
        y2 = gc(x)
        assert len(captures) == 2 and len(gc) == 1
        torch.testing.assert_close(y2, model(x), rtol=0, atol=0)
        gc(x)
        assert len(captures) == 2
        model.double()
        y3 = gc(x.double())
        assert len(captures) == 3 and y3.dtype == torch.float64


def test_cache_is_bounded_and_clear_drops_everything(cache):
    gc, _, captures = cache
    with torch.no_grad():
        for size in (8, 9, 10, 8):
            gc(torch.randn(1, 3, size, size))
        assert len(gc) == 2 and len(captures) == 4  # 8 was dropped as least recently used, then captured again
        gc.clear()
        assert len(gc) == 0
        gc(torch.randn(1, 3, 8, 8))
        assert len(captures) == 5


# -- GPU --------------------------------------------------------------------------------------------------------

def calibrated(name="hrnet_w18_small", seed=0):
    torch.manual_seed(seed)
    return hrnet_fast.calibrate_bn(hrnet_fast.create_model(name), (64, 64), steps=2, batch=2)


@pytest.mark.gpu
def test_gpu_graphs_follow_moves_and_loads():
    ref, other = calibrated().cuda(), calibrated(seed=1).cuda()
    fast = hrnet_fast.convert(ref, cuda_graph=True)
    x = torch.randn(2, 3, 64, 64, device="cuda")
    y = fast(x)
    fast.load_state_dict(hrnet_fast.convert(other).state_dict(), assign=True)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), other(x), rtol=1e-3, atol=1e-3)
        fast.cpu().cuda()  # every tensor freed and reallocated
        torch.testing.assert_close(fast(x), other(x), rtol=1e-3, atol=1e-3)
        fast.load_state_dict(hrnet_fast.convert(ref).state_dict())  # in place
        torch.testing.assert_close(fast(x), y, rtol=0, atol=0)


@pytest.mark.gpu
def test_gpu_capture_tolerates_cuda_calls_from_another_thread():
    """A pin-memory thread calling into CUDA during a capture: fatal in the global capture mode."""
    fast = hrnet_fast.convert(calibrated().cuda(), cuda_graph=True)
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            torch.empty(1 << 16, pin_memory=True)
            torch.cuda.current_stream().query()

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        for size in (64, 96, 128):
            fast(torch.randn(1, 3, size, size, device="cuda"))
    finally:
        stop.set()
        thread.join()
    assert len(fast.graphs) == 3


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("graphs", [False, True], ids=("eager", "cuda_graph"))
def test_gpu_model_on_the_second_device(backend, graphs):
    """Current device cuda:0, model and input on cuda:1: launches, captures and replays go to cuda:1."""
    ref = calibrated()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
    fast = hrnet_fast.convert(copy.deepcopy(ref).to("cuda:1"), backend=backend, cuda_graph=graphs)
    torch.cuda.set_device(0)
    y = fast(x.to("cuda:1"))
    assert y.device == torch.device("cuda:1")
    torch.testing.assert_close(y.cpu(), expected, rtol=1e-3, atol=1e-3)
