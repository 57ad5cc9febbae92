"""Page faults per forward on CPU: eager and converted, side by side, with this process's malloc settings.

    python benchmarks/cpu_page_faults.py --model pose_hrnet_w32 --input-size 256x192 --batch 1,8 --threads 2
    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296 python benchmarks/cpu_page_faults.py ...

glibc's malloc serves large blocks with mmap and hands freed memory back to the kernel past a threshold; the next
allocation of that size then faults every page in again, which a convolution writing a fresh multi-megabyte output
pays inside its own time. This prints, per implementation and batch, the median forward time and the minor page
faults per forward (``getrusage``), so the effect of the two environment variables above (set before Python
starts) can be read from two runs. JSON with ``--json PATH``.
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import torch

import hrnet_fast
from hrnet_fast.calibrate import calibrate_bn
from script_support import command, emit


def measure(model, x, calls: int):
    for _ in range(3):
        model(x)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1e3)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    times.sort()
    return {"median_ms": round(times[len(times) // 2], 2), "minor_faults_per_forward": round(faults / calls)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pose_hrnet_w32")
    p.add_argument("--input-size", default="256x192", help="HxW")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--calls", type=int, default=8)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = (int(v) for v in args.input_size.lower().split("x"))
    model = calibrate_bn(hrnet_fast.create_model(args.model), (h, w), steps=1, batch=2).eval()
    fast = hrnet_fast.convert(model)
    rows = []
    with torch.inference_mode():
        for batch in (int(b) for b in args.batch.split(",")):
            x = torch.randn(batch, 3, h, w)
            for name, impl in (("eager", model), ("converted", fast)):
                rows.append({"batch": batch, "implementation": name, **measure(impl, x, args.calls)})
    out = {"command": command(), "model": args.model, "input_size": [h, w],
           "threads": args.threads, "torch": torch.__version__,
           "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
           "loadavg": os.getloadavg()[0], "rows": rows}
    emit(out, args.json)


if __name__ == "__main__":
    main()
