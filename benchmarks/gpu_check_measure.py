"""gpu_check stage 'measure': every implementation of one (model, dtype, batch) cell timed interleaved in this one
process (hrnet_fast.timing: round-robin, the first implementation rotating, so drift hits all alike).

Models: HRNet-W18 224x224 (classification), pose HRNet-W32 256x192, HRNetV2-W18 segmentation 512x1024; batch
1/8/32; FP16 and BF16: ``CELLS``, in priority order (W18 FP16 batch 1 first). The implementations are those of
``gpu_check_measure_impls`` (eager NCHW, eager channels_last with cuDNN benchmark, eager in a CUDA graph,
torch.compile max-autotune, converted cuDNN path with and without CUDA graphs, the same graph with each HR module's
branches captured on streams of their own, converted Triton path in graphs). Batch 4 cells come last: reached
only where the budget is left.

Per implementation and cell: median / p20 / p80 ms (synchronised CUDA events), kernels per forward (CUDA kernel
events of one profiled forward), ``setup_s`` (building it) and ``first_call_s`` (its first forward: cuDNN's
search, Triton's compile and tuning, a capture, torch.compile), and the output's relative error against the fp32
reference (eager fp32, TF32 off), with the bound the converted paths must meet (DESIGN.md: at most 2x eager's own
error in that dtype plus the floor). An implementation that fails is recorded with its error; the stage fails only
when a converted path fails or misses its bound.

Budget: each cell may start building implementations for ``CELL_CAP_S`` s (the compile's cap comes on top where
it runs), its timed calls get what is left of that; a cell is not started with less than ``MIN_CELL_S`` s of the
stage's budget left, and is recorded as ``skipped: budget``, as is an implementation its cell's cap did not
reach. torch.compile max-autotune runs only in the first ``COMPILE_CELLS`` cells and only when ``COMPILE_CAP_S``
plus a cell fits in what is left; after it passes its cap once it is not tried again. The JSON is rewritten after
every cell. Smoke mode: tiny models and batches on the CPU, BF16, the same logic with the scaled budget.
"""
from __future__ import annotations

import gc
import os
import sys
import time
import traceback
from typing import Dict, List, Tuple

import torch

from gpu_check_common import DEVICE, SMOKE, stage_main
from gpu_check_plan import SMOKE_SCALE
from gpu_check_measure_impls import (CapExceeded, CompileOptions, compiled, converted, eager_channels_last,
                                     eager_cuda_graph, eager_nchw)

# name -> (model name, input size)
MODELS = {"w18": ("hrnet_w18", (224, 224)), "pose_w32": ("pose_hrnet_w32", (256, 192)),
          "seg_w18": ("seg_hrnetv2_w18", (512, 1024))}
SMOKE_MODELS = {"w18": ("hrnet_w18_small", (64, 64)), "pose_w32": ("pose_hrnet_w32", (64, 64)),
                "seg_w18": ("seg_hrnetv2_w18_small", (64, 128))}
CELLS: List[Tuple[str, str, int]] = [  # (model, dtype, batch), most wanted first
    ("w18", "fp16", 1), ("w18", "fp16", 32), ("pose_w32", "fp16", 1), ("seg_w18", "fp16", 1),
    ("w18", "bf16", 1), ("w18", "fp16", 8), ("pose_w32", "bf16", 1), ("seg_w18", "bf16", 1),
    ("pose_w32", "fp16", 32), ("w18", "bf16", 32), ("pose_w32", "fp16", 8), ("seg_w18", "fp16", 8),
    ("w18", "bf16", 8), ("pose_w32", "bf16", 32), ("pose_w32", "bf16", 8), ("seg_w18", "bf16", 8),
    ("seg_w18", "fp16", 32), ("seg_w18", "bf16", 32), ("w18", "fp16", 4), ("pose_w32", "fp16", 4),
    ("seg_w18", "fp16", 4)]
# FP32 in smoke mode: a CPU without native bf16 runs an eager bf16 W18-small forward in seconds.
SMOKE_CELLS = [("w18", "fp32", 1), ("w18", "fp32", 2), ("seg_w18", "fp32", 1)]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FLOOR = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}  # DESIGN.md's tolerance floor

SCALE = SMOKE_SCALE if SMOKE else 1.0  # the caps scale with the budget
CELL_CAP_S = 20 * SCALE
MIN_CELL_S = 8 * SCALE
MIN_IMPL_S = 1.0 * SCALE       # an implementation is not started with less of its cell's cap left
TIMED_S = 4.0 * SCALE          # at most this long of timed (and re-warming) calls per cell
# torch.compile max-autotune of a whole HRNet takes minutes cold (every conv autotuned): within the 85 s stage it
# gets the first cell only, and 30 s; Inductor's caches persist on the machine, so a rerun may finish in time.
COMPILE_CAP_S = 30 * SCALE
COMPILE_CELLS = 1
COMPILE = CompileOptions(None, "eager") if SMOKE else CompileOptions("max-autotune", "inductor")

CUDA_ONLY = ("eager_cuda_graph", "converted_cuda_graph", "converted_cuda_graph_parallel", "converted_triton_graph")
CONVERTED = ("converted_cuda", "converted_cuda_graph", "converted_cuda_graph_parallel", "converted_triton_graph")
NATIVE = "cpu" if SMOKE else "cuda"  # the backend the converted cuDNN path stands for
BUILDERS = {  # in the order they are built (torch.compile last: its cap must not eat the others' cell time)
    "eager_nchw": eager_nchw,
    "eager_channels_last": eager_channels_last,
    "eager_cuda_graph": eager_cuda_graph,
    "converted_cuda": converted(NATIVE, cuda_graph=False),
    "converted_cuda_graph": converted("cuda", cuda_graph=True),
    # The branch-parallel graph beside the serial one (the GPU default stays serial until these rows decide).
    "converted_cuda_graph_parallel": converted("cuda", cuda_graph=True, parallel_branches=True),
    "converted_triton_graph": converted("triton", cuda_graph=True),
    "compile_max_autotune": compiled(COMPILE, COMPILE_CAP_S),
}


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _error_text(e: BaseException) -> str:
    tail = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n{''.join(tail)[-1500:]}"


def kernels_per_forward(fn) -> Dict[str, int]:
    """CUDA kernels (and memcpy/memset) one forward launches, from torch.profiler; on the CPU, the top-level
    ops (a stand-in: smoke figures mean nothing)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        fn()
        _sync()
    events = prof.events()
    if DEVICE.type != "cuda":
        return {"cpu_ops": sum(1 for e in events if e.cpu_parent is None)}
    device_side = [e.name for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    copies = sum(1 for n in device_side if n.startswith(("Memcpy", "Memset")))
    return {"kernels": len(device_side) - copies, "memcpy_memset": copies}


class Models:
    """The calibrated fp32 reference model per family, made on first use."""

    def __init__(self):
        self.cache = {}

    def get(self, key: str):
        if key not in self.cache:
            import hrnet_fast
            from hrnet_fast.calibrate import calibrate_bn
            name, size = (SMOKE_MODELS if SMOKE else MODELS)[key]
            torch.manual_seed(0)
            # BN statistics from random images make activations O(1), as a trained model's are.
            model = calibrate_bn(hrnet_fast.create_model(name).to(DEVICE), size, steps=2, batch=2)
            self.cache[key] = (name, size, model.requires_grad_(False))
        return self.cache[key]


def build_impls(cell_rec, model, dtype, x, ref, cell_end, compile_why):
    """Builds and first-calls each implementation within the cell's cap; the live ones' forwards."""
    from hrnet_fast.bench.compare import relative_error
    live = {}
    for name, build in BUILDERS.items():
        rec = cell_rec["impls"][name] = {}
        if SMOKE and name in CUDA_ONLY:
            rec["status"] = "skipped: needs a CUDA device"
            continue
        if name == "compile_max_autotune" and compile_why:
            rec["status"] = f"skipped: {compile_why}"
            continue
        if name != "compile_max_autotune" and cell_end - time.time() < MIN_IMPL_S:
            rec["status"] = "skipped: budget (the cell's cap)"
            continue
        try:
            begin = time.perf_counter()
            fn = build(model, dtype, x)
            rec["setup_s"] = round(time.perf_counter() - begin, 2)
            begin = time.perf_counter()
            with torch.inference_mode():
                fn()
                _sync()
            rec["first_call_s"] = round(time.perf_counter() - begin, 2)
            begin = time.perf_counter()
            with torch.inference_mode():
                out = fn()
                _sync()
            rec["warm_call_s"] = round(time.perf_counter() - begin, 4)  # sizes the timed calls
            rec["relative_error"] = relative_error(out, ref)
            rec["status"] = "ok"
            live[name] = fn
        except (Exception, CapExceeded) as e:  # a failing implementation is recorded, never fatal
            rec.update(status="cut" if isinstance(e, CapExceeded) else "failed", error=_error_text(e))
    return live


def time_cell(cell_rec, live, cell_end) -> None:
    """Interleaved timing of the live implementations within what is left of the cell, then one profiled
    forward each. The number of rounds that fit comes from each one's warm call (each timed call follows a
    re-warming call, and the profiled forward comes after), so a slow cell is timed less, not past its cap."""
    from hrnet_fast.timing import time_round_robin
    left = max(cell_end - time.time(), 0.5)
    round_s = sum(cell_rec["impls"][n]["warm_call_s"] for n in live)
    fit = int((min(TIMED_S, left) - round_s) / (2 * round_s)) if round_s > 0 else 500
    rounds = max(1, min(fit, 500))
    min_time = max(min(TIMED_S, left - round_s), 0.0) / (2 * len(live))
    try:
        timed = time_round_robin(live, DEVICE, warmup=0, min_time=min_time, min_reps=min(3, rounds),
                                 max_reps=rounds)
    except Exception as e:
        cell_rec["timing_error"] = _error_text(e)
        return
    cell_rec["timing"] = {"max_rounds": rounds, "min_time_s": round(min_time, 3)}
    for name, stats in timed.items():
        cell_rec["impls"][name].update(stats.as_dict())
    for name, fn in live.items():
        try:
            cell_rec["impls"][name].update(kernels_per_forward(fn))
        except Exception as e:
            cell_rec["impls"][name]["profile_error"] = _error_text(e)


def check_bounds(stage, cell_id, cell_rec, dtype) -> None:
    """The converted paths against DESIGN.md's bound: at most 2x eager's error in that dtype plus the floor (eager's
    error: the larger of its NCHW and channels_last runs'; in fp32 the NCHW run is the reference itself)."""
    impls = cell_rec["impls"]
    eager = [impls[n]["relative_error"] for n in ("eager_nchw", "eager_channels_last") if "relative_error" in impls[n]]
    bound = 2 * max(eager) + FLOOR[dtype] if eager else None
    cell_rec["error_bound"] = bound
    for name in CONVERTED:
        rec = impls[name]
        if rec.get("status") == "failed":
            stage.fail(f"{cell_id}: {name} failed: {rec['error'].splitlines()[0]}")
        elif bound is not None and rec.get("relative_error") is not None and rec["relative_error"] > bound:
            stage.fail(f"{cell_id}: {name} relative error {rec['relative_error']:.3g} > bound {bound:.3g}")


def run_cell(stage, models, key, dtype_name, batch, compile_why):
    name, size, model = models.get(key)
    dtype = DTYPES[dtype_name]
    cell_rec = {"model": name, "input": [batch, 3, *size], "dtype": dtype_name, "impls": {}}
    begin = time.time()
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, *size, generator=gen).to(DEVICE)
    with torch.inference_mode():
        ref = model(x)  # fp32, TF32 off: the reference
    live = build_impls(cell_rec, model, dtype, x, ref, min(begin + CELL_CAP_S, stage.deadline), compile_why)
    if live:
        # The timed calls get what is left of the cell's cap, a compile's time included in it.
        time_cell(cell_rec, live, min(max(begin + CELL_CAP_S, time.time() + 1.5), stage.deadline))
    cell_rec["wall_s"] = round(time.time() - begin, 1)
    return cell_rec, live


def compile_reason(index: int, stage, given_up) -> str:
    """Why torch.compile does not run in the cell ``index`` ('' when it runs)."""
    if given_up:
        return given_up
    if index >= COMPILE_CELLS:
        return f"torch.compile max-autotune runs in the first {COMPILE_CELLS} cell(s) only (each compiles afresh)"
    if stage.remaining() < COMPILE_CAP_S + CELL_CAP_S:
        return f"budget: {stage.remaining():.0f} s left, its {COMPILE_CAP_S:.0f} s cap and a cell need more"
    return ""


def body(stage, args) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference without TF32 (DESIGN.md, Numerics)
    torch.backends.cudnn.allow_tf32 = False
    cells = SMOKE_CELLS if SMOKE else CELLS
    rec = stage.record
    rec.update(caps={"cell_s": CELL_CAP_S, "min_cell_s": MIN_CELL_S, "timed_s": TIMED_S, "compile_s": COMPILE_CAP_S,
                     "compile_cells": COMPILE_CELLS}, compile={"mode": COMPILE.mode, "backend": COMPILE.backend},
               implementations=list(BUILDERS), cells={})
    models = Models()
    given_up = ""
    for index, (key, dtype_name, batch) in enumerate(cells):
        cell_id = f"{key} {dtype_name} batch {batch}"
        if stage.remaining() < MIN_CELL_S:
            rec["cells"][cell_id] = {"status": "skipped: budget"}
            continue
        try:
            cell_rec, live = run_cell(stage, models, key, dtype_name, batch, compile_reason(index, stage, given_up))
        except Exception as e:  # the model or its reference could not be made: this cell fails, the next runs
            rec["cells"][cell_id] = {"status": "failed", "error": _error_text(e)}
            stage.fail(f"{cell_id}: {type(e).__name__}: {e}")
            stage.save()
            continue
        compiled_rec = cell_rec["impls"]["compile_max_autotune"]
        if compiled_rec.get("status") == "cut":
            given_up = f"passed its {COMPILE_CAP_S:.0f} s cap in cell '{cell_id}'"
        check_bounds(stage, cell_id, cell_rec, DTYPES[dtype_name])
        rec["cells"][cell_id] = cell_rec
        del live
        gc.collect()
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
        stage.save()
    skipped = [c for c, r in rec["cells"].items() if r.get("status") == "skipped: budget"]
    if skipped:
        stage.cut(f"{len(skipped)} of {len(cells)} cells not reached")


if __name__ == "__main__":
    code = stage_main("measure", body)
    sys.stdout.flush()
    # The record is written: skip the interpreter's teardown (CUDA graphs, profiler, compile workers), which can
    # take seconds past the budget.
    os._exit(code)
