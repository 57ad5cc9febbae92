"""Runs the Triton launchers' compiled-kernel path on CPU tensors with the final launch stubbed out, in a process
without ``TRITON_INTERPRET`` (the kernels must be real JIT functions): what tests/test_launch_plan.py checks.

Two stand-ins replace the GPU: the kernel's ``run`` (Triton's ordinary ``kernel[grid](...)`` launch) records its
arguments and returns a ``FakeCompiled``, whose launcher records what a launch plan hands it; and the current
stream is a fixed number. Prints one JSON object: the ordinary and plan launches of the same calls, and the
median Python cost of a planned call.

    env -u TRITON_INTERPRET python tests/launch_stub.py
"""
from __future__ import annotations

import inspect
import json
import os
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

STREAM = 7  # the fake current stream
# Per-call cost: the median over SAMPLES samples of CALLS_PER_SAMPLE calls, in this thread's CPU time; the lowest of
# RUNS such medians. Processes sharing the cores (SMT siblings, caches) inflate CPU time, never deflate it.
CALLS_PER_SAMPLE = 20
SAMPLES = 1000
RUNS = 3


class FakeCompiled:
    """A compiled kernel as a launch plan uses it: ``run`` (the launcher, read once to load the module),
    ``function``, ``packed_metadata`` and ``launch_metadata``."""

    function = 1234
    packed_metadata = (4, 1, 1, 0)

    def __init__(self):
        self.last_launch: Optional[tuple] = None  # only the last: keeping every output alive would time malloc
        self.launch_count = 0
        self.loads = 0

    @property
    def run(self):
        self.loads += 1
        return self._launch

    def _launch(self, *args):
        self.last_launch = args
        self.launch_count += 1

    def launch_metadata(self, grid, stream, *args):
        return {"grid": grid, "stream": stream}


class FakeKernel:
    """A JIT function's launch surface (``params``, ``run``, ``kernel[grid]``) whose ordinary launch records its
    keyword arguments (constexprs and config) and returns a ``FakeCompiled``."""

    def __init__(self, real):
        # The interpreter's function has no params: take the names off the Python function beneath it.
        self.params = [SimpleNamespace(name=name) for name in inspect.signature(real.fn).parameters]
        self.launched: List[dict] = []
        self.compiled: List[FakeCompiled] = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=False, **kwargs)

    def run(self, *args, grid, warmup, **kwargs):
        self.launched.append(kwargs)
        self.compiled.append(FakeCompiled())
        return self.compiled[-1]


def describe(value: Any) -> Any:
    """A JSON form of a launch argument: tensors by data pointer, dtype, shape and strides."""
    import torch
    if isinstance(value, torch.Tensor):
        return {"tensor": [value.data_ptr() & 15, str(value.dtype), list(value.shape), list(value.stride())]}
    if isinstance(value, (tuple, list)):
        return [describe(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)


def stub(kernel, launch_module) -> Dict[str, list]:
    """Replaces ``kernel.run`` and the stream lookup; returns where the launches are recorded."""
    record: Dict[str, list] = {"ordinary": [], "compiled": []}

    def ordinary_run(*args, grid, warmup, **kwargs):
        compiled = FakeCompiled()
        record["ordinary"].append((args, kwargs, grid))
        record["compiled"].append(compiled)
        return compiled

    kernel.run = ordinary_run
    launch_module.stream_getter = lambda: (lambda device_index: STREAM)
    return record


def conv_calls():
    """(args, kwargs) of conv_bn_act calls as W18 makes them: channels_last fp16 with bias, with and without a
    residual, and an NCHW fp32 one."""
    import torch

    from hrnet_fast_kernels.conv_bn_act import pack_weight
    cl = torch.channels_last
    x = torch.randn(1, 18, 64, 48, dtype=torch.float16).to(memory_format=cl)
    w = pack_weight(torch.randn(18, 18, 3, 3, dtype=torch.float16))
    b = torch.randn(18, dtype=torch.float16)
    r = torch.randn(1, 18, 64, 48, dtype=torch.float16).to(memory_format=cl)
    x32 = torch.randn(2, 36, 13, 17)
    return [((x, w, b), dict(stride=1, padding=1, residual=r, relu=True)),
            ((x, w, b), dict(stride=2, padding=1, residual=None, relu=True)),
            ((x32, torch.randn(72, 36, 1, 1), None), dict(stride=1, padding=0, residual=None, relu=False))]


def fuse_calls():
    """(args, kwargs) of multires_fuse calls: channels_last nearest with one coarser input and one same-size one,
    and an NCHW bilinear one."""
    import torch
    cl = torch.channels_last

    def t(c, h, w):
        return torch.randn(1, c, h, w, dtype=torch.float16).to(memory_format=cl)
    return [((t(18, 64, 48), [t(18, 32, 24)], [t(18, 64, 48)]), dict(relu=True)),
            ((torch.randn(2, 19, 13, 17), [torch.randn(2, 19, 7, 9)], []),
             dict(relu=False, mode="bilinear", align_corners=True))]


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("launch_stub: run without TRITON_INTERPRET", file=sys.stderr)
        return 2
    import hrnet_fast_kernels.conv_bn_act as conv
    import hrnet_fast_kernels.multires_fuse as fuse
    from hrnet_fast_kernels import launch

    pairs = []
    for module, kernel, op, calls in ((conv, conv._conv_bn_act_kernel, conv.conv_bn_act, conv_calls()),
                                      (fuse, fuse._multires_fuse_kernel, fuse.multires_fuse, fuse_calls())):
        record = stub(kernel, launch)
        for args, kwargs in calls:
            module._plans.clear()
            op(*args, **kwargs)  # no plan yet: the ordinary launch, which makes the plan
            op(*args, **kwargs)  # through the plan
            (o_args, o_kwargs, grid), compiled = record["ordinary"][-1], record["compiled"][-1]
            params = [p.name for p in kernel.params]
            ordinary = list(o_args) + [o_kwargs[name] for name in params[len(o_args):]]
            pairs.append(dict(kernel=op.__name__, ordinary=describe([grid, ordinary]),
                              planned=describe(compiled.last_launch), loads=compiled.loads,
                              ordinary_launches=len(record["ordinary"])))

    stub(conv._conv_bn_act_kernel, launch)
    args, kwargs = conv_calls()[0]
    conv.conv_bn_act(*args, **kwargs)
    medians = []
    for _ in range(RUNS):
        samples = []
        for _ in range(SAMPLES):  # this thread's CPU time: the Python cost, not time other processes held the CPU
            begin = time.thread_time()
            for _ in range(CALLS_PER_SAMPLE):
                conv.conv_bn_act(*args, **kwargs)
            samples.append((time.thread_time() - begin) / CALLS_PER_SAMPLE * 1e6)
        medians.append(statistics.median(samples))
    print(json.dumps(dict(pairs=pairs, conv_call_us=min(medians), conv_call_medians_us=medians, stream=STREAM,
                          function=FakeCompiled.function, packed_metadata=list(FakeCompiled.packed_metadata))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
