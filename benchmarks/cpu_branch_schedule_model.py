"""What the branch-parallel CPU schedule would gain on a bigger CPU: a model, from this machine's step costs.

    python benchmarks/cpu_branch_schedule_model.py --model hrnet_w18 --input-size 224x224 --threads 2 --json out.json

Measured here: each replayed step's time (torch.profiler's records of the serial replay, median of several calls)
on one thread and on ``--threads`` threads, and the time outside the replayed stages (stem, transitions, head).
Modelled: each step's time on p threads by Amdahl's law fitted to those two points, ``t(p) = t1 (s + (1 - s)/p)``
with ``s`` from ``t(threads)`` (its serial fraction, which takes in the fork/join and barrier of one parallel
call); the rest of the forward likewise. Schedules on p cores:

* serial: every step on p threads, one after another (``parallel_branches=False``);
* parallel, as built: each owner's dependency graph (``replay_schedule``: successors and segments) as
  replay_program.cpp runs it: chains on p threads, each segment of steps that can run at once on a team of
  min(p, the segment's width: the most of its steps on one level) threads, each free thread taking the ready
  step with the longest path to the end, each step at its one-thread time;
* parallel, threads split (not built: oneDNN runs a primitive inside an OpenMP region on one thread): the same
  team, each step on p // team threads.

Assumptions: no memory-bandwidth or cache contention between threads running steps at once, the same per-core
speed as here, Amdahl's serial fraction constant from 2 threads up. The model's 2-thread figures beside the
measured ones say how far to trust it.
"""
from __future__ import annotations

import argparse
import heapq
import os
import statistics
import time
from typing import Dict, List

import torch
from torch.profiler import ProfilerActivity, profile

from hrnet_fast import cpu_features
from hrnet_fast.ops import extension
from script_support import add_model_arguments, command, converted_model, emit

CORES = (2, 4, 8, 16, 32)
STEP_RECORDS = ("hrnet_fast_C::onednn_conv", "hrnet_fast_C::multires_fuse")


def step_times(model, x, threads: int, calls: int) -> Dict[str, object]:
    """Median per-step times (ms) of each replayed call, in call order, of the whole forward, and of the rest of
    it (outside the replayed steps), on ``threads``. Each profiled call is followed by an unprofiled one (the
    profiler's own cost is not the model's), so that a change in the machine's speed moves both."""
    torch.set_num_threads(threads)
    per_call: List[List[List[float]]] = []
    totals, rests = [], []
    with torch.inference_mode():
        model(x), model(x)
        for _ in range(calls):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(x)
            replays = sorted((e for e in prof.events() if e.name == "hrnet_fast_C::replay"),
                             key=lambda e: e.time_range.start)
            per_call.append([[c.cpu_time_total / 1e3 for c in sorted(r.cpu_children, key=lambda c: c.time_range.start)
                              if c.name in STEP_RECORDS] for r in replays])
            start = time.perf_counter()
            model(x)
            totals.append((time.perf_counter() - start) * 1e3)
            rests.append(max(totals[-1] - sum(map(sum, per_call[-1])), 0.0))
    steps = [[statistics.median(call[o][i] for call in per_call) for i in range(len(per_call[0][o]))]
             for o in range(len(per_call[0]))]
    return {"steps": steps, "total": statistics.median(totals), "rest": statistics.median(rests)}


def owner_graphs(model, x) -> List[dict]:
    """Each replayed call's dependency graph ({"successors", "segments"} as the extension reports it), in call
    order."""
    owners = [m for m in model.modules() if hasattr(m, "_replay")]
    inside = {id(c) for m in owners for c in m.modules() if c is not m}
    calls = []  # a hook on an owner itself keeps it replayed (one inside it would not)
    hooks = [m.register_forward_pre_hook(lambda m, args: calls.append(m))
             for m in owners if id(m) not in inside]
    with torch.inference_mode():
        model(x), model(x)
    for h in hooks:
        h.remove()
    schedule = extension.module().replay_schedule
    return [schedule(m._replay.program) for m in calls[len(calls) // 2:] if m._replay.program is not None]


def amdahl(t1: float, tn: float, n: int, p: int) -> float:
    s = min(max((n * tn / t1 - 1) / (n - 1), 0.0), 1.0) if t1 > 0 else 1.0
    return t1 * (s + (1 - s) / p)


def list_schedule(graph: dict, begin: int, end: int, cost: List[float], workers: int) -> float:
    """The time the extension's team of ``workers`` takes for steps [begin, end): each free worker takes the ready
    step with the longest path (in ``cost``) to the segment's end, as replay_program.cpp does."""
    succ = graph["successors"]
    inside = range(begin, end)
    path = {}
    for i in reversed(inside):
        path[i] = cost[i] + max((path[j] for j in succ[i] if j < end), default=0.0)
    waiting = {i: 0 for i in inside}
    for i in inside:
        for j in succ[i]:
            if j < end:
                waiting[j] += 1
    ready = [i for i in inside if waiting[i] == 0]
    running: List[tuple] = []  # (finish time, step)
    now, free = 0.0, workers
    while ready or running:
        while ready and free:
            i = max(ready, key=lambda k: (path[k], -k))
            ready.remove(i)
            heapq.heappush(running, (now + cost[i], i))
            free -= 1
        now, i = heapq.heappop(running)
        free += 1
        for j in succ[i]:
            if j < end:
                waiting[j] -= 1
                if waiting[j] == 0:
                    ready.append(j)
    return now


def simulate(one, many, graphs, threads: int, p: int) -> Dict[str, float]:
    """Modelled forward times (ms) on p cores for the three schedules."""
    rest = amdahl(one["rest"], many["rest"], threads, p)
    serial = parallel = split = rest
    for t1s, tns, graph in zip(one["steps"], many["steps"], graphs):
        tp = [amdahl(a, b, threads, p) for a, b in zip(t1s, tns)]
        serial += sum(tp)
        for at_once, begin, end, width in graph["segments"]:
            if not at_once:
                parallel += sum(tp[begin:end])
                split += sum(tp[begin:end])
                continue
            workers = min(p, width)
            parallel += list_schedule(graph, begin, end, t1s, workers)
            share = max(p // workers, 1)
            split += list_schedule(graph, begin, end,
                                   [amdahl(a, b, threads, share) for a, b in zip(t1s, tns)], workers)
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
    graphs = owner_graphs(replay_model(fast, True), x)
    one = step_times(serial, x, 1, args.calls)
    many = step_times(serial, x, args.threads, args.calls)
    if [len(s) for s in one["steps"]] != [len(g["successors"]) for g in graphs]:
        raise SystemExit(f"the profiled steps {[len(s) for s in one['steps']]} do not match the listed steps "
                         f"{[len(g['successors']) for g in graphs]}")
    out = {"command": command(), "model": args.model, "input_size": [h, w], "batch": args.batch,
           "threads": args.threads, "dtype": args.dtype, "torch": torch.__version__, "cpu": cpu_features.summary(),
           "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0],
           "measured": {"forward_1_thread_ms": round(one["total"], 3),
                        f"forward_{args.threads}_threads_ms": round(many["total"], 3),
                        "rest_1_thread_ms": round(one["rest"], 3),
                        f"rest_{args.threads}_threads_ms": round(many["rest"], 3),
                        "steps": sum(map(len, one["steps"])),
                        "replayed_steps_1_thread_ms": round(sum(map(sum, one["steps"])), 3),
                        f"replayed_steps_{args.threads}_threads_ms": round(sum(map(sum, many["steps"])), 3)},
           "model_assumptions": __doc__.split("Assumptions: ")[1].split("\n\n")[0].replace("\n", " "),
           "modelled": {str(c): simulate(one, many, graphs, args.threads, c) for c in CORES}}
    emit(out, args.json)


def replay_model(fast, parallel_branches):
    import copy

    import hrnet_fast
    return hrnet_fast.convert(copy.deepcopy(fast), parallel_branches=parallel_branches)


if __name__ == "__main__":
    main()
