"""A converted model's stages and branches replayed in one C++ call on CPU (``hrnet_fast/convert/replay.py``):
the module path's bits, never the caller's tensors written, and the module path again whenever the modules are
not as they were when the steps were listed (hooks, attributes, children, weights) or the call is not one the
steps take as given."""
from __future__ import annotations

import copy
import pickle
import threading

import pytest
import timm
import torch
from torch.profiler import ProfilerActivity, profile

import hrnet_fast
from cpu_paths import take_path
from hrnet_fast.calibrate import calibrate_bn
from hrnet_fast.convert.fused import FusedBranch, FusedConvBNAct, FusedHRModule, FusedStage
from hrnet_fast.counting import count_forward
from hrnet_fast.ops import cpu_conv, onednn_conv
from official_hrnet import OfficialHRNet, extra

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not onednn_conv.available()[0], reason="the extension was built without oneDNN")]

OWNERS = (FusedBranch, FusedStage, FusedHRModule)


def calibrated(model, size):
    calibrate_bn(model, size, steps=1, batch=2)
    return model.eval()


MODELS = {
    "ours": (lambda: hrnet_fast.create_model("hrnet_w18_small"), (64, 64)),
    "timm": (lambda: timm.create_model("hrnet_w18_small", pretrained=False), (64, 64)),
    "official pose": (lambda: OfficialHRNet(extra(18, "v1"), "pose", 17), (64, 96)),
    "official seg": (lambda: OfficialHRNet(extra(18, "v1"), "segmentation", 19, align_corners=False), (72, 40)),
    "ours seg": (lambda: hrnet_fast.create_model("seg_hrnetv2_w18_small"), (70, 45)),
}


def image(size, batch=1, dtype=torch.float32, seed=1):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed)).to(dtype)


def replays(fast, x) -> int:
    """How many replayed calls one forward makes (torch.profiler's ``hrnet_fast_C::replay`` records)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fast(x)
    return sum(e.count for e in prof.key_averages() if e.key == "hrnet_fast_C::replay")


def top_owners(fast) -> int:
    """Owners not inside another owner: the calls a replayed forward makes."""
    inner = {id(m) for o in fast.modules() if isinstance(o, OWNERS) for m in o.modules() if m is not o}
    return sum(isinstance(m, OWNERS) and id(m) not in inner for m in fast.modules())


def pair(name, dtype=torch.float32, monkeypatch=None):
    """(converted model, a copy that takes the module path on every call, input)."""
    make, size = MODELS[name]
    torch.manual_seed(0)
    model = calibrated(make(), size)
    fast = hrnet_fast.convert(model, dtype=dtype)
    return fast, copy.deepcopy(fast), image(size, dtype=dtype)


def module_path(monkeypatch, model, x):
    with monkeypatch.context() as m:
        m.setenv("HRNET_FAST_NO_REPLAY", "1")
        return model(x)


def assert_same(a, b):
    for u, v in zip(a if isinstance(a, (list, tuple)) else [a], b if isinstance(b, (list, tuple)) else [b]):
        assert u.dtype == v.dtype and u.shape == v.shape and torch.equal(u, v)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_replay_gives_the_module_paths_bits(monkeypatch, name, dtype):
    fast, plain, x = pair(name, dtype)
    want = module_path(monkeypatch, plain, x)
    with torch.inference_mode():
        first = fast(x)  # the module path, then the steps are listed
        assert_same(first, want)
        before = x.clone()
        for _ in range(2):
            assert_same(fast(x), want)
        assert torch.equal(x, before)
        # bfloat16 and float16 run on kept primitives only where oneDNN computes them natively (else ATen's path,
        # not replayed): float16 replays on an AVX512-FP16 CPU, bfloat16 on an AVX512-BF16 or AMX one.
        used = cpu_conv.native_compute(dtype)
        assert replays(fast, x) == (top_owners(fast) if used else 0)
    assert top_owners(fast) >= 3
    assert module_path(monkeypatch, plain, x) is not None and replays(plain, x) == 0


def test_a_dtype_without_kept_primitives_is_not_replayed(monkeypatch):
    """As on a CPU without native bfloat16: the convs take ATen's path, which the steps do not list."""
    take_path(monkeypatch, "widened")
    fast, plain, x = pair("ours", torch.bfloat16)
    want = module_path(monkeypatch, plain, x)
    for _ in range(2):
        assert_same(fast(x), want)
    assert replays(fast, x) == 0


@pytest.mark.parametrize("batch", [2, 0])
def test_other_batches_and_sizes(monkeypatch, batch):
    fast, plain, _ = pair("ours seg")
    for size in ((70, 45), (33, 64)):
        x = image(size, batch)
        want = module_path(monkeypatch, plain, x)
        for _ in range(2):
            assert_same(fast(x), want)
        if batch:  # (an empty batch leaves the fusions' outputs in NCHW strides: later stages take the module path)
            assert replays(fast, x) == top_owners(fast)


def stage_inputs(fast, x, stage):
    """The list of tensors ``stage`` receives in a forward of ``fast`` on ``x`` (a pre-hook on the owner itself
    leaves it replayable)."""
    seen = []
    handle = stage.register_forward_pre_hook(lambda m, args: seen.append([t.clone() for t in args[0]]))
    fast(x)
    handle.remove()
    return seen[0]


def test_a_stage_never_writes_its_inputs():
    fast, _, x = pair("ours")
    stage = fast.inner.stage3
    xs = stage_inputs(fast, x, stage)
    before = [t.clone() for t in xs]
    with torch.no_grad():
        first = stage(xs)
        second = stage(xs)
    assert stage._replay.program is not None
    assert_same(first, second)
    for t, b in zip(xs, before):
        assert torch.equal(t, b)


def deep_conv(fast) -> FusedConvBNAct:
    """A conv inside a stage's last HR module (replayed as part of its stage)."""
    return fast.inner.stage3[-1].branches[1][0].convs[0]


def warm(fast, x):
    fast(x)
    fast(x)
    assert replays(fast, x) == top_owners(fast)


def test_a_hook_inside_runs_the_module_path_and_its_removal_the_steps_again(monkeypatch):
    fast, plain, x = pair("ours")
    warm(fast, x)
    seen = []
    handle = deep_conv(fast).register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    want = module_path(monkeypatch, plain, x)
    for calls in (1, 2):
        assert_same(fast(x), want)
        assert len(seen) == calls
        assert torch.equal(seen[-1], seen[0])
    # The stage holding the hook takes the module path; its other modules and branches still replay theirs.
    assert 0 < replays(fast, x)
    handle.remove()
    fast(x)
    assert len(seen) == 3  # the call under the profiler was the last with the hook
    assert replays(fast, x) == top_owners(fast)


def test_a_global_hook_runs_the_module_path(monkeypatch):
    fast, plain, x = pair("ours")
    warm(fast, x)
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: calls.append(type(m)) if type(m) is FusedConvBNAct else None)
    try:
        assert_same(fast(x), module_path(monkeypatch, plain, x))
        assert replays(fast, x) == 0
        # Every conv ran from Python in each of the three forwards (fast, plain, fast under the profiler).
        assert len(calls) == 3 * sum(type(m) is FusedConvBNAct for m in fast.modules())
    finally:
        handle.remove()
    fast(x)
    assert replays(fast, x) == top_owners(fast)


@pytest.mark.parametrize("change", ["in place", "new data", "new buffer", "relu flag", "new child"])
def test_a_changed_module_is_run_as_it_is_now(monkeypatch, change):
    fast, plain, x = pair("ours")
    warm(fast, x)
    for model in (fast, plain):
        conv = deep_conv(model)
        if change == "in place":
            conv.weight.mul_(-0.5)
        elif change == "new data":
            conv.weight.data = conv.weight * -0.5
        elif change == "new buffer":
            conv.weight = conv.weight * -0.5
        elif change == "relu flag":
            conv.relu = False
        else:
            block = model.inner.stage3[-1].branches[1][0]
            block.convs[0] = copy.deepcopy(block.convs[1])  # C -> C like the conv it replaces
    want = module_path(monkeypatch, plain, x)
    assert_same(fast(x), want)
    assert_same(fast(x), want)
    assert replays(fast, x) == top_owners(fast)  # listed again for the modules as they are


def test_switched_off_onednn_and_dispatch_modes_take_the_module_path(monkeypatch):
    fast, plain, x = pair("ours")
    warm(fast, x)
    with torch.backends.mkldnn.flags(enabled=False):
        assert_same(fast(x), module_path(monkeypatch, plain, x))
        assert replays(fast, x) == 0
    counts = count_forward(fast, x).by_op
    assert counts["hrnet_fast.conv_bn_act.default"] == sum(type(m) is FusedConvBNAct for m in fast.modules())
    assert replays(fast, x) == top_owners(fast)


def test_copies_and_pickles_list_their_own_steps(monkeypatch):
    fast, plain, x = pair("ours")
    warm(fast, x)
    want = module_path(monkeypatch, plain, x)
    for other in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert all(m._replay.program is None for m in other.modules() if isinstance(m, OWNERS))
        assert_same(other(x), want)
        warm(other, x)
        assert_same(other(x), want)


def test_threads_share_one_model(monkeypatch):
    fast, plain, x = pair("ours")
    warm(fast, x)
    want = module_path(monkeypatch, plain, x)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(fast(x))
        except Exception as e:  # reported below: an assertion in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 15
    for y in results:
        assert_same(y, want)


def test_input_the_steps_do_not_take_gets_the_module_paths_answer_or_error():
    fast, plain, x = pair("ours")
    stage = fast.inner.stage3
    good = stage_inputs(fast, x, stage)
    with torch.no_grad():
        stage(good)
        assert stage._replay.program is not None
        wrong_size = good[:-1] + [torch.randn(*good[-1].shape[:2], 3, 3).contiguous(memory_format=torch.channels_last)]
        with pytest.raises(RuntimeError, match="multires_fuse"):
            stage(wrong_size)
        half = [t.half() for t in good]  # not the steps' dtype: the module path converts it, as it did before
        assert_same(stage(half), plain.inner.stage3(half))
        assert_same(stage(good), plain.inner.stage3(good))


def test_the_extension_refuses_malformed_steps():
    from hrnet_fast.ops import extension
    from hrnet_fast.ops.onednn_conv import OnednnConv
    mod = extension.module()
    fuse = ("fuse", 0, [], [], "nearest", False, 1, [])
    with pytest.raises(ValueError, match='"conv" or "fuse"'):
        mod.replay_new([("pool", 0)], 1, 2, [1], 0)
    with pytest.raises(ValueError, match="out of range"):
        mod.replay_new([("fuse", 0, [5], [], "nearest", False, 1, [])], 1, 2, [1], 0)
    with pytest.raises(TypeError):
        mod.replay_new([("conv", None)], 1, 2, [1], 0)
    with pytest.raises(ValueError, match="no earlier step writes"):
        mod.replay_new([("fuse", 2, [], [], "nearest", False, 1, []), ("fuse", 0, [], [], "nearest", False, 2, [])],
                       1, 3, [1], 0)
    with pytest.raises(ValueError, match="written twice or over an input"):
        mod.replay_new([fuse, fuse], 1, 2, [1], 0)
    with pytest.raises(ValueError, match="written twice or over an input"):
        mod.replay_new([("fuse", 0, [], [], "nearest", False, 0, [])], 1, 2, [1], 0)
    weight, bias = torch.randn(4, 4, 1, 1), torch.zeros(4)
    handle = OnednnConv(weight, 1, 0)._handle

    def conv(x, residual, in_place, out):
        return ("conv", handle, weight, weight.data_ptr(), 0, bias, x, residual, False, in_place, out, [])
    with pytest.raises(ValueError, match="read by a later step"):  # in place, then read again
        mod.replay_new([fuse, conv(0, 1, True, 2), ("fuse", 1, [], [], "nearest", False, 3, [])], 1, 4, [2, 3], 0)
    with pytest.raises(ValueError, match="an input or an output"):
        mod.replay_new([fuse, conv(0, 1, True, 2)], 1, 3, [1, 2], 0)
    with pytest.raises(ValueError, match="the conv's own input"):
        mod.replay_new([fuse, conv(1, 1, True, 2)], 1, 3, [2], 0)
    with pytest.raises(ValueError, match="mode"):
        mod.replay_new([fuse], 1, 2, [1], 3)


def test_a_dropped_model_is_freed():
    """The steps hold the layers' primitives and the watch the modules' dicts (the owner's own among them, which
    hold the watch): neither may keep a model alive once the caller drops it."""
    import gc
    import weakref
    fast, _, x = pair("ours")
    warm(fast, x)
    ref = weakref.ref(fast)
    del fast
    gc.collect()
    assert ref() is None


def test_a_hook_on_a_stage_itself_keeps_it_replayed(monkeypatch):
    """Feature extraction hooks a stage: the hook runs around the replayed call and sees its outputs, which no
    later step overwrites."""
    fast, plain, x = pair("ours")
    warm(fast, x)
    seen, want_seen = [], []
    fast.inner.stage3.register_forward_hook(lambda m, i, o: seen.append([t.clone() for t in o] + list(o)))
    plain.inner.stage3.register_forward_hook(lambda m, i, o: want_seen.append([t.clone() for t in o]))
    want = module_path(monkeypatch, plain, x)
    for _ in range(2):
        assert_same(fast(x), want)
    assert replays(fast, x) == top_owners(fast)
    assert len(seen) == 3
    for got in seen:
        n = len(got) // 2
        assert_same(got[:n], want_seen[0])
        assert_same(got[n:], want_seen[0])  # the tensors the hook kept were not written afterwards
