"""One CPU convolution call three ways, side by side: ATen's oneDNN op, ATen's prepacked oneDNN context, and the
extension's kept oneDNN primitives (``hrnet_fast/ops/onednn_conv.py``).

    python benchmarks/cpu_conv_call_cost.py --threads 2 --json out.json

Each way runs the same fp32 conv (+bias +ReLU) on channels_last input with its weight prepared once; the routes
are interleaved call by call and the median per shape reported in microseconds. The 1x1 conv on a 1x1 map has
almost no arithmetic: its time is each route's cost outside the kernel. The other shapes are HRNet-W32 pose convs
at batch 1 (256x192 input).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from hrnet_fast.ops import onednn_conv
from script_support import command, emit

# (Cin, Cout, k, H, W)
SHAPES = [(16, 16, 1, 1, 1), (32, 32, 3, 64, 48), (64, 64, 3, 32, 24), (256, 256, 3, 8, 6), (64, 32, 1, 32, 24),
          (64, 256, 1, 64, 48)]


def routes(cin, cout, k, h, w):
    x = torch.randn(1, cin, h, w).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5
    bias = torch.randn(cout)
    p = k // 2
    pad, one = [p, p], [1, 1]
    mk = torch.ops.mkldnn
    packed = mk._reorder_convolution_weight(weight, pad, one, one, 1, list(x.shape))
    context = torch.ops.mkldnn_prepacked.conv2d_prepack(weight, bias, one, pad, one, 1, list(x.shape), "relu")
    kept = onednn_conv.OnednnConv(weight, 1, p) if onednn_conv.available()[0] else None
    out = {
        "aten_convolution_pointwise": lambda: mk._convolution_pointwise(x, packed, bias, pad, one, one, 1, "relu",
                                                                        [], None),
        "aten_prepacked_conv2d_run": lambda: torch.ops.mkldnn_prepacked.conv2d_run(x, context),
    }
    if kept is not None:
        out["kept_primitives"] = lambda: kept.run(x, bias, None, True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with torch.inference_mode():
        for shape in SHAPES:
            fns = routes(*shape)
            for fn in fns.values():
                for _ in range(30):
                    fn()
            times = {name: [] for name in fns}
            for _ in range(args.calls):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - start) * 1e6)
            row = {"cin_cout_k_h_w": list(shape)}
            for name, ts in times.items():
                ts.sort()
                row[name + "_us"] = round(ts[len(ts) // 2], 1)
            rows.append(row)
            print(row)
    out = {"command": command(), "threads": args.threads, "torch": torch.__version__,
           "onednn": onednn_conv.available()[1], "loadavg": os.getloadavg()[0], "rows": rows}
    emit(out, args.json, show=False)


if __name__ == "__main__":
    main()
