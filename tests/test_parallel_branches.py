"""The branch-parallel schedule of replayed CPU stages (``hrnet_fast/convert/replay.py``): the same answers as
the serial replay (bitwise where every conv ran the same oneDNN kernel on one thread as on all, else within the
tolerance rule), on every model family and dtype, with hooks, odd batches, threads sharing a model, and the
switch, the environment variable and the report saying which schedule runs."""
from __future__ import annotations

import threading

import pytest
import torch

import hrnet_fast
from hrnet_fast.convert import replay
from hrnet_fast.convert.fused import FusedConvBNAct, FusedHRModule
from hrnet_fast.ops import extension, onednn_conv
from hrnet_fast.ops.onednn_conv import OnednnConv
from test_replay import MODELS, assert_same, calibrated, image, replays, stage_inputs
from tolerance import assert_model_matches

pytestmark = pytest.mark.skipif(not onednn_conv.available()[0], reason="the extension was built without oneDNN")

THREADS = 2  # the smallest team that runs steps at once


@pytest.fixture(autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


def models(name, dtype=torch.float32):
    """(calibrated reference, serial-replay model, branch-parallel model, input)."""
    make, size = MODELS[name]
    torch.manual_seed(0)
    model = calibrated(make(), size)
    serial = hrnet_fast.convert(model, dtype=dtype, parallel_branches=False)
    return model, serial, hrnet_fast.convert(model, dtype=dtype, parallel_branches=True), image(size, dtype=dtype)


def same_kernels(model) -> bool:
    """Whether each conv ran one oneDNN kernel whatever its thread count: forward convolutions split their work
    over outputs, never over the reduction, so one kernel on one thread and on two gives the same bits."""
    impls = extension.module().onednn_conv_implementations
    for m in model.modules():
        prepared = m._prepared.current(m.weight) if isinstance(m, FusedConvBNAct) else None
        if type(prepared) is OnednnConv and len({name for _, name in impls(prepared._handle)}) > 1:
            return False
    return True


def assert_same_answers(model, serial, parallel, x, dtype):
    """The parallel replay's outputs against the serial replay's: bitwise where the kernels are the same, else the
    tolerance rule against the float64 truth; and the parallel schedule really ran."""
    with torch.inference_mode():
        want = [serial(x) for _ in range(2)][-1]
        got = [parallel(x) for _ in range(2)][-1]
    replayed = [not s["schedule"].startswith("module path") for s in serial.schedules().values()]
    # A dtype without kept primitives on this CPU (bf16 on AVX2) is not replayed at all, serially or not.
    assert replayed == [not s["schedule"].startswith("module path") for s in parallel.schedules().values()]
    if any(replayed):
        assert any(s["schedule"].startswith("branch-parallel") for s in parallel.schedules().values())
    if same_kernels(parallel):
        assert_same(got, want)
    else:
        assert_model_matches(model, parallel, x.float(), dtype)


@pytest.mark.parametrize("name", MODELS)
def test_parallel_replay_gives_the_serial_replays_answers(name):
    model, serial, parallel, x = models(name)
    assert_same_answers(model, serial, parallel, x, torch.float32)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("name", ("ours", "official pose"))
def test_reduced_precision(name, dtype):
    model, serial, parallel, x = models(name, dtype)
    assert_same_answers(model, serial, parallel, x, dtype)


@pytest.mark.parametrize("batch", (0, 1, 3))
def test_batches(batch):
    model, serial, parallel, x1 = models("ours seg")
    x = image(tuple(x1.shape[-2:]), batch=batch, seed=5)
    with torch.inference_mode():
        serial(x1), parallel(x1)  # the steps listed; then the batch itself on its first replayed calls
        for _ in range(2):
            want, got = serial(x), parallel(x)
    assert_same(got, want)


def test_input_a_parallel_run_rejects_gets_the_module_paths_error_and_good_input_its_answer():
    """A kernel's error inside the team of threads reaches the caller as the module path's error (not a crash or a
    hang), and the next call with good input runs the parallel steps again."""
    _, serial, parallel, x = models("ours")
    stage = parallel.inner.stage3
    with torch.no_grad():
        good = stage_inputs(parallel, x, stage)
        stage(good), stage(good)
        calls = replays(parallel, x)
        wrong_size = good[:-1] + [torch.randn(*good[-1].shape[:2], 3, 3).contiguous(memory_format=torch.channels_last)]
        with pytest.raises(RuntimeError, match="multires_fuse"):
            stage(wrong_size)
        assert_same(stage(good), serial.inner.stage3(good))
        assert replays(parallel, x) == calls > 0


def test_a_hook_inside_takes_the_module_path_and_its_removal_the_parallel_steps():
    model, serial, parallel, x = models("timm")
    with torch.inference_mode():
        want = serial(x)
        parallel(x), parallel(x)
        module = next(m for m in parallel.modules() if isinstance(m, FusedHRModule) and len(m.branches) > 1)
        seen = []
        handle = module.branches[1].register_forward_hook(lambda m, i, o: seen.append(o))
        assert_same(parallel(x), want)
        assert seen, "the hook inside the stage ran"
        handle.remove()
        calls = replays(parallel, x)
        assert_same(parallel(x), want)
    assert calls == replays(serial, x) and calls > 0


def test_automatic_decides_once_per_shape_and_threads_and_says_why():
    model, serial, _, x = models("ours")
    auto = hrnet_fast.convert(model)  # parallel_branches=None
    with torch.inference_mode():
        auto(x), auto(x)
        schedules = auto.schedules()
        decided = [s for s in schedules.values() if s["decisions"]]
        assert decided, schedules
        for s in decided:
            (d,) = s["decisions"]
            assert (d["batch"], d["threads"]) == (1, THREADS) and d["serial_ms"] > 0 and d["parallel_ms"] > 0
            assert s["schedule"].startswith("automatic: ") and ("branch-parallel" if d["parallel"] else "serial") \
                in s["schedule"]
        auto(x)
        assert [len(s["decisions"]) for s in auto.schedules().values()] == \
            [len(s["decisions"]) for s in schedules.values()]  # decided once
        torch.set_num_threads(1)
        auto(x)  # one thread: serial, nothing to decide
        assert [len(s["decisions"]) for s in auto.schedules().values()] == \
            [len(s["decisions"]) for s in schedules.values()]
    assert "branch schedule:" in str(auto.fusion_report())


def test_warmup_makes_the_automatic_decision():
    """After ``hrnet_fast.warmup`` the first real call of each shape runs only the chosen schedule."""
    model, _, _, x = models("ours")
    auto = hrnet_fast.convert(model)  # parallel_branches=None
    hrnet_fast.warmup(auto, [tuple(x.shape)])
    decided = {path: len(s["decisions"]) for path, s in auto.schedules().items() if s["decisions"]}
    assert decided and set(decided.values()) == {1}, auto.schedules()
    with torch.inference_mode():
        auto(x)
    assert {path: len(s["decisions"]) for path, s in auto.schedules().items() if s["decisions"]} == decided


def test_the_switch_and_the_environment(monkeypatch):
    model, serial, parallel, x = models("ours")
    with torch.inference_mode():
        serial(x), serial(x), parallel(x), parallel(x)
    assert all(not s["schedule"].startswith(("branch-parallel", "automatic"))
               for s in serial.schedules().values())
    assert "serial: parallel_branches=False" in str(serial.fusion_report())
    again = hrnet_fast.convert(parallel)  # a converted model given again keeps its setting
    assert again.parallel_branches is True
    monkeypatch.setenv("HRNET_FAST_PARALLEL_BRANCHES", "0")
    off = hrnet_fast.convert(model, parallel_branches=True)
    with torch.inference_mode():
        off(x), off(x)
    assert all("HRNET_FAST_PARALLEL_BRANCHES=0" in s["schedule"] or "no independent" in s["schedule"]
               or "not replayed" in s["schedule"] for s in off.schedules().values())
    assert any("HRNET_FAST_PARALLEL_BRANCHES=0" in s["schedule"] for s in off.schedules().values())


def test_threads_share_a_parallel_model():
    """Two Python threads, each with its own OpenMP team of two, many calls on one model: every output equals the
    one thread's."""
    _, serial, parallel, x = models("official pose")
    inputs = [image(tuple(x.shape[-2:]), seed=s) for s in range(3)]
    with torch.inference_mode():
        want = [serial(t) for t in inputs]
    results, errors = {}, []
    start = threading.Barrier(2)

    def worker(k):
        try:
            start.wait()
            with torch.inference_mode():
                results[k] = [(i % 3, parallel(inputs[i % 3])) for i in range(20)]
        except BaseException as e:  # re-raised below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    exact = same_kernels(parallel)
    for k, outs in results.items():
        for i, out in outs:
            if exact:
                assert_same(out, want[i])
            else:
                torch.testing.assert_close(out, want[i], rtol=1e-5, atol=1e-5)


def small_program(keep_first: bool):
    """step 0: a = relu(x); step 1: b = relu(a); step 2: c = relu(conv1x1(x) + bias + a), summed into ``a`` in place
    unless ``a`` is an output (``keep_first``). (handle, outputs' slots, what they should be for an input)."""
    torch.manual_seed(3)
    weight, bias = torch.randn(8, 8, 1, 1), torch.randn(8)
    conv = OnednnConv(weight, 1, 0)
    b = replay.Builder(1, replay.PARALLEL)
    a = b.fuse(0, [], [], "nearest", False)
    second = b.fuse(a, [], [], "nearest", False)
    third = b.conv(conv._handle, weight, bias, True, 0, a)
    outputs = [a, second, third] if keep_first else [second, third]
    program = b.program(outputs)

    def expected(x):
        first = x.relu()
        want = [first.relu(), (torch.nn.functional.conv2d(x, weight, bias) + first).relu()]
        return [first] + want if keep_first else want
    return program, b.steps, expected


@pytest.mark.parametrize("keep_first", (False, True))
def test_the_graph_is_read_off_the_slots(keep_first):
    """A step waits for the steps writing what it reads; a conv summing its residual in place also for the other
    readers of that residual (else it could overwrite it under them). Steps that every other step comes before or
    after form chains, the rest segments run at once. The parallel run gives the right answers, call after call."""
    program, steps, expected = small_program(keep_first)
    info = extension.module().replay_schedule(program)
    in_place = steps[2][9]
    assert in_place is (not keep_first)
    if in_place:
        assert info["successors"] == [[1, 2], [2], []] and not info["splits"]
        assert info["segments"] == [(False, 0, 3, 1)]  # a chain
    else:
        assert info["successors"] == [[1, 2], [], []] and info["splits"]
        assert info["segments"] == [(False, 0, 1, 1), (True, 1, 3, 2)]  # steps 1 and 2 at once, after step 0
    x = torch.randn(1, 8, 12, 10).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(50):
            got = extension.module().replay_run(program, [], [x])
            assert got is not None
            for g, w in zip(got, expected(x)):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
