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
from tolerance import assert_model_matches


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

    def capture(self, x, batch, fn):
        static_in = self._static_input(x, batch)
        graph = FakeGraph(fn, static_in)
        captures.append(graph)
        return graph, static_in, graph.static_out

    monkeypatch.setattr(cuda_graph.GraphCache, "_capture", capture)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    gc = cuda_graph.GraphCache(lambda x: model(x), max_graphs=2, module=model)
    return gc, model, captures


def test_batch_bucket_is_the_next_power_of_two():
    assert [cuda_graph.batch_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 31, 32, 33)] == [1, 2, 4, 4, 8, 8, 16, 32,
                                                                                     32, 64]


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


def test_constant_further_arguments_get_a_graph_each(cache):
    """fn(x, *args, **kwargs) for constant arguments (an mmpose estimator's data_samples=None, mode="tensor"): one
    graph per (input, arguments), each replaying what fn computes with them."""
    gc, model, captures = cache
    gc.fn = lambda x, samples=None, mode="tensor": model(x) * (2 if mode == "double" else 1)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(gc(x, None), model(x), rtol=0, atol=0)
        torch.testing.assert_close(gc(x, None, mode="double"), 2 * model(x), rtol=0, atol=0)
        torch.testing.assert_close(gc(x, None, mode="tensor"), model(x), rtol=0, atol=0)
        assert len(captures) == 3
        gc(x, None, mode="double")
        assert len(captures) == 3  # replayed, not captured again
    assert cuda_graph.GraphCache.takes((None, 1, 2.0, True), {"mode": "tensor"})
    assert not cuda_graph.GraphCache.takes((torch.zeros(1),), {})
    assert not cuda_graph.GraphCache.takes((), {"data_samples": [object()]})


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


def test_bucketed_batches_share_a_graph_and_return_their_own_rows(cache):
    gc, model, captures = cache
    gc.bucket_batches = True
    gc.max_graphs = 8
    torch.manual_seed(1)
    with torch.no_grad():
        for n in (3, 4, 2, 3):  # buckets 4, 4, 2, 4
            x = torch.randn(n, 3, 8, 8)
            y = gc(x)
            assert y.shape[0] == n
            torch.testing.assert_close(y, model(x), rtol=0, atol=0)
        assert len(captures) == 2 and len(gc) == 2
        assert [g.static_in.shape[0] for g in captures] == [4, 2]
        x = torch.randn(5, 3, 8, 8).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(gc(x), model(x), rtol=0, atol=0)
        assert captures[-1].static_in.shape[0] == 8
        assert captures[-1].static_in.is_contiguous(memory_format=torch.channels_last)
        assert gc(torch.randn(0, 3, 8, 8)).shape[0] == 0 and len(captures) == 3  # batch 0: no graph


def test_bucketing_turns_off_for_outputs_without_a_batch_dimension(cache):
    gc, model, captures = cache
    gc.fn = lambda x: model(x).sum(dim=0).flatten()  # one output for the whole batch: padded rows would change it
    gc.bucket_batches = True
    x = torch.randn(3, 3, 8, 8)
    assert gc.key(x)[0][0] == 4
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="do not all lead with the batch dimension"):
        y = gc(x)
    assert not gc.bucket_batches and gc.key(x)[0][0] == 3
    assert [g.static_in.shape[0] for g in captures] == [4, 3] and len(gc) == 1
    with torch.no_grad():
        torch.testing.assert_close(y, model(x).sum(dim=0).flatten(), rtol=0, atol=0)


def test_graph_mode_of_converted_models():
    """None (the default) replays graphs for CUDA inputs only; False never builds a cache; a converted model
    given to convert() again keeps its mode unless told otherwise."""
    model = calibrated()
    fast = hrnet_fast.convert(model)
    assert fast.cuda_graph is None and fast.graphs is not None and fast.graphs.bucket_batches
    assert "cuda_graph=auto" in repr(fast)
    called = []
    fast.graphs = type("Recorder", (), {"__call__": lambda self, x: called.append(x)})()
    fast(torch.randn(1, 3, 64, 64))
    assert not called  # a CPU input runs the fused model directly
    off = hrnet_fast.convert(model, cuda_graph=False)
    assert off.graphs is None and "cuda_graph=False" in repr(off)
    again = hrnet_fast.convert(off)
    assert again.graphs is None and again.cuda_graph is False
    import torchvision
    generic = hrnet_fast.convert(torchvision.models.resnet18().eval())
    assert not generic.graphs.bucket_batches  # not an HRNet: graphs per exact shape


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


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=("fp16", "bf16"))
def test_gpu_triton_backend_under_graphs(dtype, tmp_path, monkeypatch):
    """The Triton convs and fusions captured in a graph: the tuned configs are what capture launches (warm-up
    loads them), also when the choice comes from the tuning file of an earlier process."""
    from hrnet_fast_kernels import tuning
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path / "tuning.json"))
    ref = calibrated().cuda()
    x = torch.randn(3, 3, 64, 64, device="cuda")
    for _ in range(2):  # second round: a fresh process's view, every choice read from the file
        tuning.forget()
        fast = hrnet_fast.convert(ref, dtype=dtype, backend="triton", cuda_graph=True)
        y = assert_model_matches(ref, fast, x, dtype)[0]
        assert len(fast.graphs) == 1
        torch.testing.assert_close(fast(x.to(dtype)), y, rtol=0, atol=0)


@pytest.mark.gpu
def test_gpu_default_replays_graphs_per_batch_bucket():
    ref = calibrated().cuda()
    fast = hrnet_fast.convert(ref)
    assert fast.cuda_graph is None
    with torch.no_grad():
        for n in (5, 8, 6):  # one graph, for batch 8
            assert_model_matches(ref, fast, torch.randn(n, 3, 64, 64, device="cuda"))
        assert len(fast.graphs) == 1
        fast(torch.randn(1, 3, 64, 64, device="cuda"))
        assert len(fast.graphs) == 2
        eager = hrnet_fast.convert(ref, cuda_graph=False)
        x = torch.randn(5, 3, 64, 64, device="cuda")
        torch.testing.assert_close(fast(x), eager(x), rtol=1e-3, atol=1e-3)
