"""An HR module's parts captured on their own CUDA streams (``hrnet_fast/convert/branch_streams.py``), checked
without a GPU: the capture path runs on CPU tensors under a test double of torch.cuda's stream, event and
capture-state API that logs every fork, join and kernel. Every kernel of branch i (and of output fusion i) is
enqueued on the stream part i owns, each part's stream waits on a fork recorded on the capture stream before its
first kernel, and the capture stream waits on every part's join before the module returns; the outputs are the
serial forward's."""
from __future__ import annotations

import contextlib

import pytest
import torch

import hrnet_fast
from hrnet_fast.convert import branch_streams, fused
from hrnet_fast.convert.fused import FusedConvBNAct, FusedHRModule
from test_replay import MODELS, assert_same, calibrated, image


class FakeCuda:
    """torch.cuda's Stream, Event, stream(), current_stream() and is_current_stream_capturing(), logging."""

    def __init__(self):
        self.log = []
        owner = self

        class Stream:
            def __init__(self, device=None):
                self.device = device

            def wait_event(self, event):
                owner.log.append(("wait", self, event))

        class Event:
            def record(self, stream):
                owner.log.append(("record", stream, self))

        self.Stream, self.Event = Stream, Event
        self.capture = Stream("capture")
        self.current = self.capture

    @contextlib.contextmanager
    def stream(self, s):
        before, self.current = self.current, s
        try:
            yield
        finally:
            self.current = before

    def install(self, monkeypatch):
        for name in ("Stream", "Event", "stream"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.current)
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
        monkeypatch.setattr(branch_streams, "on_cuda", lambda x: True)
        monkeypatch.setattr(branch_streams, "_streams", {})
        conv_forward, fuse = FusedConvBNAct.forward, fused.fuse

        def logged_conv(module, *args, **kwargs):
            self.log.append(("kernel", self.current, module))
            return conv_forward(module, *args, **kwargs)

        def logged_fuse(*args, **kwargs):
            self.log.append(("kernel", self.current, "fuse"))
            return fuse(*args, **kwargs)

        monkeypatch.setattr(FusedConvBNAct, "forward", logged_conv)
        monkeypatch.setattr(fused, "fuse", logged_fuse)


def check_module(log, module, capture):
    """The fork/join discipline and kernel placement of one FusedHRModule call (its slice of the log)."""
    phases = [list(module.branches)] + ([list(module.fuses)] if len(module.fuses) else [])
    i = 0
    for parts in phases:
        # fork: one event recorded on the capture stream, then each part's stream waits on it
        kind, stream, fork = log[i]
        assert (kind, stream) == ("record", capture), log[i]
        i += 1
        streams = []
        for part in parts:
            kind, stream, event = log[i]
            assert kind == "wait" and event is fork and stream is not capture, log[i]
            owned = {id(m) for m in part.modules()}
            i += 1
            kernels = 0
            while log[i][0] == "kernel":
                _, on, what = log[i]
                assert on is stream, f"a kernel of {type(part).__name__} was enqueued on another stream"
                assert what == "fuse" or id(what) in owned
                kernels += 1
                i += 1
            assert kernels > 0
            kind, on, done = log[i]
            assert kind == "record" and on is stream, log[i]
            streams.append((stream, done))
            i += 1
        assert len({id(s) for s, _ in streams}) == len(parts), "each part has a stream of its own"
        # join: the capture stream waits on every part's event, before anything else is enqueued
        for stream, done in streams:
            kind, on, event = log[i]
            assert (kind, on, event) == ("wait", capture, done), log[i]
            i += 1
    return i


@pytest.mark.parametrize("name", ("ours", "official pose", "ours seg"))
def test_capture_puts_each_part_on_its_stream_between_fork_and_join(monkeypatch, name):
    monkeypatch.setenv("HRNET_FAST_NO_REPLAY", "1")  # the module path: every kernel is a module call
    torch.set_num_threads(1)
    make, size = MODELS[name]
    torch.manual_seed(0)
    model = calibrated(make(), size)
    x = image(size)
    with torch.inference_mode():
        want = hrnet_fast.convert(model, parallel_branches=False)(x)
    fast = hrnet_fast.convert(model, parallel_branches=True)
    cuda = FakeCuda()
    cuda.install(monkeypatch)
    calls = []
    for m in fast.modules():
        if isinstance(m, FusedHRModule):
            m.register_forward_pre_hook(lambda m, a: calls.append((m, len(cuda.log))))
    with torch.inference_mode():
        got = fast(x)
    assert_same(got, want)
    assert calls
    for module, start in calls:
        check_module(cuda.log[start:], module, cuda.capture)


def test_no_streams_outside_a_capture_or_when_serial(monkeypatch):
    x = torch.zeros(1, 2, 4, 4)
    monkeypatch.setattr(branch_streams, "on_cuda", lambda x: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert not branch_streams.concurrent(True, x)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert branch_streams.concurrent(True, x)
    assert not branch_streams.concurrent(None, x) and not branch_streams.concurrent(False, x)
