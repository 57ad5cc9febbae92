"""Where a converted model's CPU forward spends its time: compute kernels vs everything else (Python module
calls, op dispatch, oneDNN primitive set-up), by torch.profiler.

    python benchmarks/cpu_overhead.py --model hrnet_w18 --batch 1 --threads 1 --repeats 5

Kernel time is the self time of the ops that do the arithmetic (oneDNN and ATen convolutions, GEMMs, the fused
multires kernel, pooling, copies); the rest of the wall time is overhead. Each repeat profiles one forward; the
repeat with the lowest wall time is reported (the least disturbed by other processes), with the load average.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

import hrnet_fast
from hrnet_fast import cpu_features
from hrnet_fast.calibrate import calibrate_bn

# Ops whose self time is arithmetic or data movement rather than dispatch.
KERNELS = ("mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_", "aten::_slow_conv2d_forward",
           "aten::mkldnn_convolution", "aten::addmm", "aten::mm", "aten::copy_", "aten::add", "aten::add_",
           "aten::relu_", "aten::adaptive_avg_pool2d", "aten::mean", "hrnet_fast_C::multires_fuse")


def profile_forward(model, x):
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        model(x)
        wall = time.perf_counter() - start
    per_op = collections.Counter()
    calls = collections.Counter()
    for e in prof.key_averages():
        per_op[e.key] += e.self_cpu_time_total
        calls[e.key] += e.count
    return wall * 1e6, per_op, calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hrnet_w18")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = hrnet_fast.create_model(args.model)
    calibrate_bn(model, steps=1, batch=2)
    fast = hrnet_fast.convert(model.eval(), dtype=dtype)
    x = torch.randn(args.batch, 3, 224, 224).to(dtype)
    with torch.no_grad():
        for _ in range(3):
            fast(x)
    best = min((profile_forward(fast, x) for _ in range(args.repeats)), key=lambda r: r[0])
    wall, per_op, calls = best
    kernel = sum(v for k, v in per_op.items() if k in KERNELS)
    print(json.dumps({
        "model": args.model, "batch": args.batch, "threads": args.threads, "dtype": args.dtype,
        "cpu": cpu_features.summary(), "loadavg": os.getloadavg(),
        "wall_ms": round(wall / 1e3, 2), "kernel_ms": round(kernel / 1e3, 2),
        "overhead_pct": round(100 * (1 - kernel / wall), 1),
        "top_self_ms": {k: [round(v / 1e3, 2), calls[k]] for k, v in per_op.most_common(12)},
    }, indent=1))


if __name__ == "__main__":
    main()
