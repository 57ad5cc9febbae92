"""Where a converted model's CPU forward spends its time: the compute kernels, the set-up around each oneDNN call,
and Python.

    python benchmarks/cpu_overhead.py --model pose_hrnet_w32 --input-size 256x192 --batch 1 --threads 2

The replayed steps run in the serial schedule (``parallel_branches=False``), each conv on every thread, so that
kernel times add up to part of the wall time. Three measurements of the same warm forward, each repeated and the
lowest kept (the least disturbed by other processes):

* wall: the forward alone, timed;
* oneDNN's own account of its primitives' execution (``ONEDNN_VERBOSE=profile_exec``, the ``exec`` lines; torch's
  oneDNN and the extension's, ``hrnet_fast/ops/onednn_conv.py``, both read it): the convolution kernels' time,
  without what is done before each one starts (for ATen's op: primitive descriptor creation, memory descriptors,
  the post-op attributes; for both: allocating the output);
* torch.profiler's self time per op: ops that call oneDNN (their self time is set-up + oneDNN's execution), the
  other kernels (the fused multi-resolution kernel, ATen's own convolutions, copies), and the rest, which is
  Python and dispatch (wall minus every op's self time; the profiler's own cost lands in the ops' time), plus the
  replayed calls' own time between their steps (``hrnet_fast/convert/replay.py``), which stands in for it.

So: kernels = oneDNN execution + the other kernels; per-call set-up = the oneDNN-calling ops' self time minus
oneDNN's execution; Python = wall minus all op time. Printed as JSON, and written with ``--json PATH``.
``HRNET_FAST_NO_ONEDNN=1`` measures the path through ATen's oneDNN op instead of the kept primitives (the JSON's
``conv_path`` says which ran), ``HRNET_FAST_NO_REPLAY=1`` the module path's Python calls instead of replayed
stages (``replayed_calls`` counts those that ran).
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import os
import sys
import tempfile
import time
from typing import Dict, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from hrnet_fast import cpu_features
from hrnet_fast.convert import replay
from hrnet_fast.ops import cpu_conv, extension
from script_support import add_model_arguments, command, converted_model, emit

# Ops whose self time is oneDNN's execution plus ATen's set-up of the call.
ONEDNN_OPS = ("hrnet_fast_C::onednn_conv", "mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_",
              "aten::mkldnn_convolution")
# Ops whose self time is arithmetic or data movement done outside oneDNN.
OTHER_KERNELS = ("aten::_slow_conv2d_forward", "aten::addmm", "aten::mm", "aten::copy_", "aten::add",
                 "aten::add_", "aten::relu_", "aten::adaptive_avg_pool2d", "aten::mean", "hrnet_fast_C::multires_fuse",
                 "aten::upsample_bilinear2d", "aten::upsample_nearest2d", "aten::cat")
# A replayed stage's or branch's call: its self time is what it does between its steps.
REPLAY = "hrnet_fast_C::replay"


def timed(model, x) -> float:
    start = time.perf_counter()
    model(x)
    return (time.perf_counter() - start) * 1e3


def op_times(model, x) -> Tuple[Dict[str, float], Dict[str, int]]:
    """Self CPU ms and calls per op of one forward."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    ms, calls = collections.Counter(), collections.Counter()
    for e in prof.key_averages():
        ms[e.key] += e.self_cpu_time_total / 1e3
        calls[e.key] += e.count
    return dict(ms), dict(calls)


def onednn_exec(model, x) -> Tuple[float, int]:
    """(ms, primitives) oneDNN reports executing in one forward. Its verbose log goes to the C stdout, so the
    file descriptor is redirected around the call."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            own = getattr(extension.module(), "onednn_set_verbose", None)  # the extension's oneDNN, if built
            if own is not None:
                own(1)
            try:
                with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                    model(x)
            finally:
                if own is not None:
                    own(0)
            libc.fflush(None)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        times = [float(line.rsplit(",", 1)[1]) for line in log if ",exec," in line]
    return sum(times), len(times)


def measure(model, x, repeats: int) -> Dict[str, object]:
    wall = min(timed(model, x) for _ in range(repeats))
    exec_ms, primitives = min((onednn_exec(model, x) for _ in range(repeats)), key=lambda r: r[0])
    ms, calls = min((op_times(model, x) for _ in range(repeats)), key=lambda r: sum(r[0].values()))
    onednn_ops = sum(ms.get(k, 0.0) for k in ONEDNN_OPS)
    other = sum(ms.get(k, 0.0) for k in OTHER_KERNELS)
    setup = max(onednn_ops - exec_ms, 0.0)
    python = max(wall - sum(ms.values()), 0.0) + ms.get(REPLAY, 0.0)
    onednn_calls = sum(calls.get(k, 0) for k in ONEDNN_OPS)
    share = lambda v: round(100 * v / wall, 1)  # noqa: E731
    return {
        "wall_ms": round(wall, 2),
        "kernels_ms": round(exec_ms + other, 2), "kernels_pct": share(exec_ms + other),
        "onednn_exec_ms": round(exec_ms, 2), "onednn_primitives": primitives,
        "other_kernels_ms": round(other, 2),
        "onednn_setup_ms": round(setup, 2), "onednn_setup_pct": share(setup), "onednn_calls": onednn_calls,
        "onednn_setup_us_per_call": round(1e3 * setup / max(onednn_calls, 1), 1),
        "python_and_dispatch_ms": round(python, 2), "python_and_dispatch_pct": share(python),
        "replayed_calls": calls.get(REPLAY, 0), "replay_between_steps_ms": round(ms.get(REPLAY, 0.0), 2),
        "overhead_pct": share(wall - exec_ms - other),
        "top_self_ms": {k: [round(v, 2), calls[k]] for k, v in collections.Counter(ms).most_common(10)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(p)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    fast, x, (h, w) = converted_model(args)
    # The serial schedule: with steps running at once, kernel times add up across threads and exceed the wall.
    fast.set_parallel_branches(False)
    with torch.inference_mode():
        for _ in range(3):
            fast(x)
        load_before = os.getloadavg()[0]
        result = measure(fast, x, args.repeats)
    out = {"command": command(), "model": args.model, "input_size": [h, w],
           "batch": args.batch, "threads": args.threads, "dtype": args.dtype, "torch": torch.__version__,
           "cpu": cpu_features.summary(), "conv_path": cpu_conv.availability()[1],
           "replay": replay.enabled(),
           "loadavg_before_after": [load_before, os.getloadavg()[0]], **result}
    emit(out, args.json)


if __name__ == "__main__":
    main()
