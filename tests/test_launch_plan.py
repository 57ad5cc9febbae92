"""Launch plans (kernels/launch.py): a planned Triton launch hands the compiled kernel's launcher exactly what
Triton's own ``kernel[grid](...)`` launch would, costs under 10 us of Python per conv call, and under CUDA-graph
capture launches only what an earlier call outside capture loaded, with the tuned config.

No GPU: the compiled-kernel path runs in a subprocess without the interpreter (tests/launch_stub.py) with the
final launch stubbed; the capture tests run in this process with the kernel replaced by a recorder."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import triton

import hrnet_fast_kernels.conv_bn_act as conv
from hrnet_fast_kernels import launch, tuning
from launch_stub import FakeCompiled, FakeKernel

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA = torch.device("cuda")
GATE_US = 10.0


@pytest.fixture(scope="module")
def stubbed():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, os.path.join(HERE, "launch_stub.py")], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_plan_launch_gets_the_ordinary_launch_arguments(stubbed):
    """For each call the plan's launcher receives the grid, the current stream, the compiled function and its
    packed metadata, then exactly the arguments (tensors by alignment, dtype, shape and strides; scalars and
    constexprs by value) of the ordinary launch that made the plan."""
    assert [p["kernel"] for p in stubbed["pairs"]] == ["conv_bn_act"] * 3 + ["multires_fuse"] * 2
    for pair in stubbed["pairs"]:
        grid, ordinary = pair["ordinary"]
        planned = pair["planned"]
        assert planned[:3] == (grid + [1, 1])[:3]
        assert planned[3:7] == [stubbed["stream"], stubbed["function"], stubbed["packed_metadata"], None]
        assert all("HookChain" in hook for hook in planned[7:9])  # Triton's enter/exit hooks, passed on
        assert planned[9:] == ordinary
        assert pair["loads"] == 1  # the module was loaded when the plan was made
    for kernel in ("conv_bn_act", "multires_fuse"):  # the second call of each went through the plan
        launches = [p["ordinary_launches"] for p in stubbed["pairs"] if p["kernel"] == kernel]
        assert launches == list(range(1, len(launches) + 1))


@pytest.mark.static_gpu
def test_planned_conv_call_costs_under_10us_of_python(stubbed):
    """Python per planned conv_bn_act call, launch stubbed (a recorder stands for the C launcher): the median
    over 1000 samples of 20 calls in CPU time, the lowest of three such medians (launch_stub.py)."""
    assert stubbed["conv_call_us"] < GATE_US, f"{stubbed['conv_call_us']:.1f} us per conv_bn_act call"


def test_launch_hooks_get_metadata():
    """With a launch hook registered, the plan hands the launcher (which calls the hooks) Triton's launch metadata
    and the hook chains, as kernel[grid] does."""
    from triton import knobs
    compiled = FakeCompiled()
    plan = launch.LaunchPlan(compiled, (3, 2), (5, "tf32"), None, lambda device: 9)
    hook = [].append
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        plan("x", "y")
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert compiled.last_launch[:9] == (3, 2, 1, 9, compiled.function, compiled.packed_metadata,
                                        {"grid": (3, 2), "stream": 9}, knobs.runtime.launch_enter_hook,
                                        knobs.runtime.launch_exit_hook)
    assert compiled.last_launch[9:] == ("x", "y", 5, "tf32")


@pytest.fixture
def compiled_path(monkeypatch, tmp_path):
    """The conv launcher as on a GPU: compiled-kernel path, the kernel a recorder, the device taken for CUDA by
    tuning (device name faked), the capture state switchable, timing recorded in state["timed"]."""
    state = {"capturing": False, "timed": []}
    kernel = FakeKernel(conv._conv_bn_act_kernel)
    monkeypatch.setattr(conv, "_INTERPRETED", False)
    monkeypatch.setattr(conv, "_conv_bn_act_kernel", kernel)
    monkeypatch.setattr(conv, "_plans", {})
    monkeypatch.setattr(launch, "stream_getter", lambda: (lambda device: 7))
    monkeypatch.setattr(tuning, "capturing", lambda device: state["capturing"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path / "tuning.json"))
    monkeypatch.delenv(tuning.SWITCH_ENV, raising=False)
    real_pick = tuning.pick
    monkeypatch.setattr(tuning, "pick", lambda k, key, configs, run, device: real_pick(k, key, configs, run, CUDA))
    monkeypatch.setattr(tuning, "_bench", lambda run, config: state["timed"].append(config) or 1.0)
    tuning.forget()
    yield kernel, state
    tuning.forget()


def conv_inputs(h=80, w=64):
    x = torch.randn(1, 18, h, w, dtype=torch.float16).to(memory_format=torch.channels_last)
    return x, conv.pack_weight(torch.randn(36, 18, 3, 3, dtype=torch.float16)), torch.randn(36, dtype=torch.float16)


def test_capture_launches_the_warm_up_kernel_with_the_file_choice(compiled_path, tmp_path):
    """The tuned choice comes from the file (an earlier process): the warm-up launches and loads it, and the
    capture launches that same loaded kernel, neither the first candidate nor a new compile."""
    kernel, state = compiled_path
    x, w, b = conv_inputs()
    configs = conv.candidates(18, 36, 40 * 32, row_taps=3)  # what the launcher offers: NHWC 3x3, stride 2
    assert len(configs) > 1
    winner = configs[-1]
    key = tuning.full_key("conv_bn_act", conv.tuning_key(x, w, 2, True, 40 * 32), CUDA)
    (tmp_path / "tuning.json").write_text(json.dumps({key: tuning.config_record(winner)}))

    conv.conv_bn_act(x, w, b, stride=2, padding=1, residual=None, relu=True)  # warm-up
    assert state["timed"] == []
    assert [k["BLOCK_M"] for k in kernel.launched] == [winner.kwargs["BLOCK_M"]]
    assert kernel.launched[0]["num_warps"] == winner.num_warps
    loaded = kernel.compiled[0]
    assert loaded.loads == 1

    state["capturing"] = True
    conv.conv_bn_act(x, w, b, stride=2, padding=1, residual=None, relu=True)
    assert len(kernel.launched) == 1 and loaded.launch_count == 1  # through the plan, on the loaded kernel


def test_capture_of_a_new_shape_says_to_warm_up(compiled_path):
    kernel, state = compiled_path
    x, w, b = conv_inputs()
    conv.conv_bn_act(x, w, b, stride=1, padding=1, residual=None, relu=True)
    launched = len(kernel.launched)  # the candidates tuning ran, then the call's own launch
    assert state["timed"] and launched == 1
    state["capturing"] = True
    x2, _, _ = conv_inputs(h=96)
    with pytest.raises(tuning.NotWarmedUp, match=r"conv_bn_act .*hrnet_fast\.warmup\(model, shapes\)"):
        conv.conv_bn_act(x2, w, b, stride=1, padding=1, residual=None, relu=True)
    assert len(kernel.launched) == launched


def test_multires_fuse_capture_of_a_new_shape_says_to_warm_up(monkeypatch):
    import hrnet_fast_kernels.multires_fuse as fuse
    kernel = FakeKernel(fuse._multires_fuse_kernel)
    monkeypatch.setattr(fuse, "_INTERPRETED", False)
    monkeypatch.setattr(fuse, "_multires_fuse_kernel", kernel)
    monkeypatch.setattr(fuse, "_plans", {})
    monkeypatch.setattr(tuning, "capturing", lambda device: True)
    with pytest.raises(tuning.NotWarmedUp, match="multires_fuse"):
        fuse.multires_fuse(torch.zeros(1, 18, 8, 8), [torch.zeros(1, 18, 4, 4)], [], relu=True)
    assert kernel.launched == []
