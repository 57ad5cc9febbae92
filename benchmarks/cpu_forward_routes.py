"""A converted model's CPU forward three ways, side by side: each fused op called from Python through the module
tree, stages and branches replayed in one C++ call each (the default, ``hrnet_fast/convert/replay.py``), and
``torch.compile`` of the converted model (its fused ops visible to the compiler as registered ops).

    python benchmarks/cpu_forward_routes.py --model hrnet_w18 --input-size 224x224 --threads 2 --json out.json

All three run the same converted model's weights; the routes are interleaved call by call (``hrnet_fast.timing``)
and reported as median milliseconds with p20/p80, plus each route's largest difference from the module path's
output (0 where the same kernels ran). The module path is taken by setting ``HRNET_FAST_NO_REPLAY=1`` around its
calls, which a model reads when it would list its steps.
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import torch

from hrnet_fast import cpu_features
from hrnet_fast.convert import replay
from hrnet_fast.timing import time_round_robin
from script_support import add_model_arguments, command, converted_model, emit


def module_path(model):
    def call(x):
        os.environ["HRNET_FAST_NO_REPLAY"] = "1"
        try:
            return model(x)
        finally:
            del os.environ["HRNET_FAST_NO_REPLAY"]
    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(p)
    p.add_argument("--min-time", type=float, default=5.0, help="seconds of timed calls per route")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out (it compiles for minutes)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    if not replay.enabled():
        p.error("HRNET_FAST_NO_REPLAY=1 is set: the replayed route would take the module path too")
    fast, x, (h, w) = converted_model(args)
    routes = {"module path": module_path(copy.deepcopy(fast)), "replayed": fast}
    compile_s = None
    if not args.no_compile:
        compiled = torch.compile(copy.deepcopy(fast))
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
        compile_s = time.perf_counter() - start
        routes["torch.compile(converted)"] = compiled
    with torch.inference_mode():
        outputs = {name: fn(x).float() for name, fn in routes.items()}
    stats = time_round_robin({name: (lambda fn=fn: fn(x)) for name, fn in routes.items()}, min_time=args.min_time)
    base = outputs["module path"]
    out = {"command": command(), "model": args.model, "input_size": [h, w], "batch": args.batch,
           "threads": args.threads, "dtype": args.dtype, "torch": torch.__version__, "cpu": cpu_features.summary(),
           "loadavg_after": os.getloadavg()[0], "compile_s": None if compile_s is None else round(compile_s, 1),
           "rows": [{"route": name, **{k: round(v, 3) for k, v in s.as_dict().items() if k != "reps"},
                     "reps": s.reps, "max_abs_diff_vs_module_path": float((outputs[name] - base).abs().max())}
                    for name, s in stats.items()]}
    emit(out, args.json)


if __name__ == "__main__":
    main()
