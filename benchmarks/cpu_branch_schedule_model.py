"""What the branch-parallel CPU schedule would gain on a bigger CPU: a model, from this machine's step costs.

    python benchmarks/cpu_branch_schedule_model.py --model hrnet_w18 --input-size 224x224 --threads 2 --json out.json

Measured here: each replayed step's time (torch.profiler's records of the serial replay, median of several calls)
on one thread and on ``--threads`` threads, and the time outside the replayed stages (stem, transitions, head).
Modelled: each step's time on p threads by Amdahl's law fitted to those two points, ``t(p) = t1 (s + (1 - s)/p)``
with ``s`` from ``t(threads)`` (its serial fraction, which takes in the fork/join and barrier of one parallel
call); the rest of the forward likewise. Schedules on p cores:

* serial: every step on p threads, one after another (``parallel_branches=False``);
* parallel, as built: a phase's lanes (``replay.py``) on min(lanes, p) threads, one thread a lane, each lane
  taken by the first free thread in order (the OpenMP dynamic schedule), each step at its one-thread time;
  one-lane phases on p threads;
* parallel, threads split (not built: oneDNN runs a primitive inside an OpenMP region on one thread): each of a
  phase's k lanes on p // k threads, or one thread each where k >= p.

Assumptions: no memory-bandwidth or cache contention between lanes, the same per-core speed as here, Amdahl's
serial fraction constant from 2 threads up. The model's 2-thread figures beside the measured ones say how far
to trust it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Dict, List

import torch
from torch.profiler import ProfilerActivity, profile

from hrnet_fast import cpu_features
from hrnet_fast.convert import replay
from script_support import add_model_arguments, command, converted_model, emit

CORES = (2, 4, 8, 16, 32)
STEP_RECORDS = ("hrnet_fast_C::onednn_conv", "hrnet_fast_C::multires_fuse")


def step_times(model, x, threads: int, calls: int) -> Dict[str, object]:
    """Median per-step times (ms) of each replayed call, in call order, and of the whole forward, on ``threads``."""
    torch.set_num_threads(threads)
    per_call: List[List[List[float]]] = []
    totals = []
    with torch.inference_mode():
        model(x), model(x)
        for _ in range(calls):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(x)
            replays = sorted((e for e in prof.events() if e.name == "hrnet_fast_C::replay"),
                             key=lambda e: e.time_range.start)
            per_call.append([[c.cpu_time_total / 1e3 for c in sorted(r.cpu_children, key=lambda c: c.time_range.start)
                              if c.name in STEP_RECORDS] for r in replays])
        for _ in range(calls):  # the whole forward unprofiled: the profiler's own cost is not the model's
            start = time.perf_counter()
            model(x)
            totals.append((time.perf_counter() - start) * 1e3)
    steps = [[statistics.median(call[o][i] for call in per_call) for i in range(len(per_call[0][o]))]
             for o in range(len(per_call[0]))]
    return {"steps": steps, "total": statistics.median(totals)}


def owner_phases(model, x) -> List[List[List[int]]]:
    """Each replayed call's phases (lanes of step indices), in call order, as the parallel builder lists them."""
    owners = [m for m in model.modules() if hasattr(m, "_replay")]
    inside = {id(c) for m in owners for c in m.modules() if c is not m}
    calls = []  # a hook on an owner itself keeps it replayed (one inside it would not)
    hooks = [m.register_forward_pre_hook(lambda m, args: calls.append((m, args[0])))
             for m in owners if id(m) not in inside]
    with torch.inference_mode():
        model(x), model(x)
    for h in hooks:
        h.remove()
    phases = []
    for m, inputs in calls[len(calls) // 2:]:  # the second forward's calls
        if m._replay.program is None:
            continue
        as_list = isinstance(inputs, (list, tuple))
        b = replay.Builder(len(inputs) if as_list else 1, replay.PARALLEL)
        b.build(m, as_list)
        phases.append([lanes for lanes, _ in b.phases])
    return phases


def amdahl(t1: float, tn: float, n: int, p: int) -> float:
    s = min(max((n * tn / t1 - 1) / (n - 1), 0.0), 1.0) if t1 > 0 else 1.0
    return t1 * (s + (1 - s) / p)


def simulate(one, many, phases, threads: int, p: int) -> Dict[str, float]:
    """Modelled forward times (ms) on p cores for the three schedules."""
    rest = amdahl(one["total"] - sum(map(sum, one["steps"])), many["total"] - sum(map(sum, many["steps"])),
                  threads, p)
    serial = parallel = split = rest
    for t1s, tns, owner in zip(one["steps"], many["steps"], phases):
        tp = [amdahl(a, b, threads, p) for a, b in zip(t1s, tns)]
        serial += sum(tp)
        for lanes in owner:
            if len(lanes) == 1:
                parallel += sum(tp[i] for i in lanes[0])
                split += sum(tp[i] for i in lanes[0])
                continue
            free = [0.0] * min(len(lanes), p)
            for lane in lanes:  # the dynamic schedule: the next lane to the first free thread
                k = free.index(min(free))
                free[k] += sum(t1s[i] for i in lane)
            parallel += max(free)
            share = max(p // len(lanes), 1)
            split += max(sum(amdahl(t1s[i], tns[i], threads, share) for i in lane) for lane in lanes) \
                if share > 1 else max(free)
    return {"serial_ms": round(serial, 3), "parallel_ms": round(parallel, 3), "split_ms": round(split, 3),
            "parallel_speedup": round(serial / parallel, 3), "split_speedup": round(serial / split, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(p)
    p.add_argument("--calls", type=int, default=7, help="profiled calls per thread count")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    fast, x, (h, w) = converted_model(args)
    serial = replay_model(fast, False)
    phases = owner_phases(replay_model(fast, True), x)
    one = step_times(serial, x, 1, args.calls)
    many = step_times(serial, x, args.threads, args.calls)
    if [len(s) for s in one["steps"]] != [sum(len(lane) for lanes in owner for lane in lanes) for owner in phases]:
        raise SystemExit(f"the profiled steps {[len(s) for s in one['steps']]} do not match the listed steps "
                         f"{[sum(len(lane) for lanes in owner for lane in lanes) for owner in phases]}")
    out = {"command": command(), "model": args.model, "input_size": [h, w], "batch": args.batch,
           "threads": args.threads, "dtype": args.dtype, "torch": torch.__version__, "cpu": cpu_features.summary(),
           "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0],
           "measured": {"forward_1_thread_ms": round(one["total"], 3),
                        f"forward_{args.threads}_threads_ms": round(many["total"], 3),
                        "steps": sum(map(len, one["steps"])),
                        "replayed_steps_1_thread_ms": round(sum(map(sum, one["steps"])), 3),
                        f"replayed_steps_{args.threads}_threads_ms": round(sum(map(sum, many["steps"])), 3)},
           "model_assumptions": __doc__.split("Assumptions: ")[1].split("\n\n")[0].replace("\n", " "),
           "modelled": {str(c): simulate(one, many, phases, args.threads, c) for c in CORES}}
    emit(out, args.json)


def replay_model(fast, parallel_branches):
    import copy

    import hrnet_fast
    return hrnet_fast.convert(copy.deepcopy(fast), parallel_branches=parallel_branches)


if __name__ == "__main__":
    main()
