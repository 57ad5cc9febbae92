"""A converted model's replayed CPU forward with its branches one after another (``parallel_branches=False``,
each conv on every thread) and at once (``True``, steps that can run at once each on one thread), the automatic
choice (``None``), the serial replay on one thread, and OpenVINO (fp32, and at its default precision: bf16 where
the CPU computes bf16) side by side.

    python benchmarks/cpu_branch_schedule.py --model hrnet_w18 --input-size 224x224 --threads 2 --json out.json

All routes are interleaved call by call in one process (``hrnet_fast.timing``) and reported as median
milliseconds with p20/p80, each converted route's ratio to the serial replay, and its largest difference from the
serial replay's output (0 where the same kernels ran). The load average before and after says how busy the
machine was.

The one-thread route bounds what any schedule of the same kernels can gain: with every step scaling perfectly,
``threads`` threads take at best its time divided by ``threads``. ``perfect_scaling_bound`` is the serial replay's
speed-up at that bound (the serial replay's median over the one-thread median / ``threads``); no schedule reaches
it, since a chain of convs (the stem, layer1, the classification head) runs at oneDNN's own split of each conv.
"""
from __future__ import annotations

import argparse
import copy
import os

import torch

from hrnet_fast import cpu_features
from hrnet_fast.bench.peers.base import BuildContext
from hrnet_fast.timing import time_round_robin
from script_support import add_model_arguments, command, converted_model, emit


def openvino_routes(model, size, dtype: str) -> dict:
    """OpenVINO fp32 and (for a bf16 comparison) at its default precision, built from the reference model."""
    from hrnet_fast.bench.peers.openvino_runtime import build_openvino_default, build_openvino_fp32
    ctx = BuildContext(torch.device("cpu"), "fp32", size)
    builds = {"openvino fp32": build_openvino_fp32} if dtype == "fp32" else {"openvino default": build_openvino_default}
    routes = {}
    for name, build in builds.items():
        impl = build(model, ctx)
        routes[f"{name} ({impl.info.get('inference_precision', '?')})"] = (impl.forward, impl.prepare)
    return routes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(p)
    p.add_argument("--min-time", type=float, default=5.0, help="seconds of timed calls per route")
    p.add_argument("--no-openvino", action="store_true", help="leave OpenVINO out")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    fast, x, (h, w) = converted_model(args)
    models = {f"replayed, parallel_branches={v}": hrnet_fast_convert(fast, v) for v in (False, True, None)}
    routes = {name: (m, lambda t: t) for name, m in models.items()}
    serial = models["replayed, parallel_branches=False"]  # its kept convs hold a plan per thread count
    routes[ONE_THREAD] = (lambda t: on_one_thread(serial, t, args.threads), lambda t: t)
    if not args.no_openvino:
        routes.update(openvino_routes(reference_model(args), (h, w), args.dtype))
    prepared = {name: prep(x) for name, (_, prep) in routes.items()}
    with torch.inference_mode():
        outputs = {name: first_tensor(fn(prepared[name])) for name, (fn, _) in routes.items()}
    stats = time_round_robin({name: (lambda fn=fn, a=prepared[name]: fn(a)) for name, (fn, _) in routes.items()},
                             min_time=args.min_time)
    serial_name = "replayed, parallel_branches=False"
    base, base_ms = outputs[serial_name], stats[serial_name].median_ms
    out = {"command": command(), "model": args.model, "input_size": [h, w], "batch": args.batch,
           "threads": args.threads, "dtype": args.dtype, "torch": torch.__version__, "cpu": cpu_features.summary(),
           "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0],
           "perfect_scaling_bound": round(base_ms / (stats[ONE_THREAD].median_ms / args.threads), 3),
           "automatic_schedule": {k: v["schedule"] for k, v in models["replayed, parallel_branches=None"]
                                  .schedules().items() if v["decisions"]},
           "rows": [{"route": name, **{k: round(v, 3) for k, v in s.as_dict().items() if k != "reps"},
                     "reps": s.reps, "speedup_vs_serial_replay": round(base_ms / s.median_ms, 3),
                     "max_abs_diff_vs_serial_replay": float((outputs[name] - base).abs().max())}
                    for name, s in stats.items()]}
    emit(out, args.json)


ONE_THREAD = "replayed, parallel_branches=False, 1 thread"


def on_one_thread(model, x: torch.Tensor, threads: int):
    """``model(x)`` with torch's thread count set to 1 for the call, ``threads`` again after it."""
    torch.set_num_threads(1)
    try:
        return model(x)
    finally:
        torch.set_num_threads(threads)


def first_tensor(out) -> torch.Tensor:
    """The first output (a converted model's tensor, OpenVINO's list of arrays) as an fp32 tensor."""
    return torch.as_tensor(out[0] if isinstance(out, list) else out).float()


def hrnet_fast_convert(fast, parallel_branches):
    import hrnet_fast
    return hrnet_fast.convert(copy.deepcopy(fast), parallel_branches=parallel_branches)


def reference_model(args):
    """The calibrated reference model ``converted_model`` converted (same seed, same calibration)."""
    import hrnet_fast
    from hrnet_fast.calibrate import calibrate_bn
    torch.manual_seed(0)
    h, w = (int(v) for v in args.input_size.lower().split("x"))
    model = hrnet_fast.create_model(args.model)
    calibrate_bn(model, (h, w), steps=1, batch=2)
    return model.eval()


if __name__ == "__main__":
    main()
