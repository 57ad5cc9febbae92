"""Triton launch-config choice (kernels/tuning.py): timed once per key, remembered in memory and in a JSON file
keyed by device, Triton version, kernel and key; re-timed when the stored choice is no longer a candidate.

No GPU here: the device is a torch.device("cuda") object, and the timing (``_bench``), the device name and the
capture check are replaced by stand-ins that record what was timed."""
from __future__ import annotations

import json

import pytest
import torch
import triton

from hrnet_fast_kernels import tuning
from launch_stub import FakeKernel

CONFIGS = [triton.Config({"BLOCK_M": m}, num_warps=4, num_stages=3) for m in (32, 64, 128)]
CUDA = torch.device("cuda")


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """Times: BLOCK_M 64 is fastest. Returns the list of timed BLOCK_M values."""
    timed = []

    def bench(run, config):
        timed.append(run(config).kwargs["BLOCK_M"])
        return {32: 3.0, 64: 1.0, 128: 2.0}[config.kwargs["BLOCK_M"]]

    monkeypatch.setattr(tuning, "_bench", bench)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path / "tuning.json"))
    monkeypatch.delenv(tuning.SWITCH_ENV, raising=False)
    tuning.forget()
    yield timed
    tuning.forget()


def run(config):
    return config


def test_times_once_then_remembers(fake_gpu, tmp_path):
    assert tuning.pick("conv", ("fp16", 18), CONFIGS, run, CUDA) is CONFIGS[1]
    assert sorted(fake_gpu) == [32, 64, 128]
    assert tuning.pick("conv", ("fp16", 18), CONFIGS, run, CUDA) is CONFIGS[1]
    assert len(fake_gpu) == 3  # the second call timed nothing
    stored = json.loads((tmp_path / "tuning.json").read_text())
    assert stored == {f"Fake GPU|triton-{triton.__version__}|conv|fp16,18": tuning.config_record(CONFIGS[1])}


def test_another_process_reads_the_file(fake_gpu):
    tuning.pick("conv", ("fp16", 18), CONFIGS, run, CUDA)
    tuning.forget()  # as a new process: nothing in memory
    fresh = [triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=c.num_stages) for c in CONFIGS]
    assert tuning.pick("conv", ("fp16", 18), fresh, run, CUDA) is fresh[1]
    assert len(fake_gpu) == 3
    tuning.pick("conv", ("fp16", 36), CONFIGS, run, CUDA)  # another key is timed
    assert len(fake_gpu) == 6


def test_stale_choice_is_timed_again(fake_gpu):
    tuning.pick("conv", ("fp16", 18), CONFIGS, run, CUDA)
    tuning.forget()
    others = [triton.Config({"BLOCK_M": m}, num_warps=8, num_stages=3) for m in (32, 128)]  # 64/w4 is gone
    assert tuning.pick("conv", ("fp16", 18), others, run, CUDA) is others[1]
    assert fake_gpu[3:] == [32, 128]


def test_no_timing_when_switched_off_or_single(fake_gpu, monkeypatch):
    assert tuning.pick("conv", ("k",), CONFIGS[2:], run, CUDA) is CONFIGS[2]
    assert tuning.pick("conv", ("k",), CONFIGS, run, torch.device("cpu")) is CONFIGS[0]
    monkeypatch.setenv(tuning.SWITCH_ENV, "off")
    assert tuning.pick("conv", ("k",), CONFIGS, run, CUDA) is CONFIGS[0]
    assert fake_gpu == []


def test_persistence_off_and_unwritable(fake_gpu, monkeypatch, tmp_path):
    monkeypatch.setenv(tuning.CACHE_ENV, "off")
    assert tuning.cache_path() is None
    tuning.pick("conv", ("a",), CONFIGS, run, CUDA)
    assert not list(tmp_path.iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(tuning.CACHE_ENV, str(blocker / "tuning.json"))  # a path under a file: not writable
    tuning.forget()
    with pytest.warns(RuntimeWarning, match="could not save Triton tuning results"):
        assert tuning.pick("conv", ("b",), CONFIGS, run, CUDA) is CONFIGS[1]


def test_default_location(monkeypatch, tmp_path):
    monkeypatch.delenv(tuning.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tuning.cache_path() == str(tmp_path / "hrnet_fast" / "triton_tuning.json")


def capture(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)


def test_capture_returns_the_remembered_choice(fake_gpu, monkeypatch):
    """During capture the choice made outside it is launched, not the first candidate."""
    tuning.pick("conv", ("fp16", 18), CONFIGS, run, CUDA)
    capture(monkeypatch)
    assert tuning.pick("conv", ("fp16", 18), CONFIGS, run, CUDA) is CONFIGS[1]
    assert len(fake_gpu) == 3


def test_capture_returns_the_file_choice(fake_gpu, monkeypatch):
    tuning.pick("conv", ("fp16", 18), CONFIGS, run, CUDA)
    tuning.forget()  # a new process: only the file knows the choice
    capture(monkeypatch)
    assert tuning.pick("conv", ("fp16", 18), CONFIGS, run, CUDA) is CONFIGS[1]
    assert len(fake_gpu) == 3


def test_capture_of_an_unknown_key_says_to_warm_up(fake_gpu, monkeypatch):
    capture(monkeypatch)
    with pytest.raises(tuning.NotWarmedUp, match=r"hrnet_fast\.warmup\(model, shapes\) or one ordinary forward"):
        tuning.pick("conv", ("fp16", 18), CONFIGS, run, CUDA)
    assert fake_gpu == []


def test_multires_fuse_is_tuned_by_pick(monkeypatch):
    """The fusion kernel is a plain JIT function whose configs tuning.pick chooses (one policy for both kernels:
    HRNET_FAST_TUNING=off, no timing during capture), with the bilinear variant's candidates bounded per thread."""
    import hrnet_fast_kernels.multires_fuse as fuse
    assert not hasattr(fuse._multires_fuse_kernel, "configs")  # no triton.autotune wrapper
    monkeypatch.setattr(fuse, "_INTERPRETED", False)
    nearest, bilinear = fuse.candidates(False), fuse.candidates(True)
    assert len(nearest) == 6 and 0 < len(bilinear) < len(nearest)
    assert all(c.kwargs["BLOCK"] // (32 * c.num_warps) <= fuse.MAX_BILINEAR_ELEMENTS_PER_THREAD for c in bilinear)
    picks = []

    def pick(kernel, key, configs, run_config, device):
        picks.append((kernel, key, len(configs)))
        return configs[0]
    monkeypatch.setattr(fuse.tuning, "pick", pick)
    monkeypatch.setattr(fuse, "_multires_fuse_kernel", FakeKernel(fuse._multires_fuse_kernel))
    assert len(fuse.candidates(False, 18 * 8 * 8)) == 1  # half a wave at the smallest block: nothing to time
    fuse._launch(torch.zeros(1, 18, 64, 64), [torch.zeros(1, 18, 32, 32)], [], True, "nearest", False,
                 make_plan=False)
    assert picks == [("multires_fuse", ("float32", "nchw", 1, 18, 64, 64, 1, 0, "nearest"), 6)]
