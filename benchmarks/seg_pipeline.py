"""Segmentation end to end: the reference pipeline (eager network, full-resolution upsample, argmax) against the
fused one (normalize op, convert()ed network, resize_argmax), per image, with the memory of the steps around the
network.

    python benchmarks/seg_pipeline.py --json benchmarks/results/cpu-seg-pipeline.json
    python benchmarks/seg_pipeline.py --cases w18:512x1024 --dtypes fp32 --reps 3

Per case (model, image size) and dtype:

- ``end_to_end_ms``: the median of ``--reps`` calls of ``Segmenter(model, fused=False)(image)`` and
  ``Segmenter(model)(image)`` (uint8 image in, class map out), interleaved; the fused pipeline's first call per
  shape (oneDNN primitives made, weights reordered) is an untimed warm-up, the eager one's needs none.
- ``post_network``: the steps after the network on the network's own logits (captured from the timed calls):
  the reference's ``F.interpolate`` to full size + ``argmax`` + the uint8 class map, and the fused
  ``resize_argmax``. ``peak_bytes`` is the peak of the bytes the steps allocate, from torch.profiler's record of
  every allocation and free made through torch's CPU allocator while they run (``profile_memory=True``: the
  running sum of the recorded sizes, in time order): the full-resolution logits and the int64 argmax for the
  reference, the class map for the fused op (a kernel's own stack and registers are not allocations and do not
  count). The logits themselves are the network's output, present in both and not counted. ``ms``: the median of
  ``--reps`` calls of the steps alone.
- ``pre_network``: the same for the normalisation (uint8 HWC image to the network's NCHW input).
- ``agreement``: the fused class map against the reference's. In fp32: the pixels that differ, and at each the
  gap between the two labels' full-resolution reference logits, against the bound no tie-free pixel can be
  under: twice the largest difference between the two networks' stride-4 logits (a bilinear resize is a convex
  blend, so it cannot move a logit by more; the two differ by rounding). ``all_ties`` says every differing pixel
  is within it. In bf16: the share of pixels each bf16 pipeline (fused, and eager bf16) labels as the fp32
  reference does.

``--no-eager bf16`` leaves out the eager bf16 network where it is impractical (a CPU without native bf16 runs
eager bf16 convolutions through slow fallbacks: minutes a frame): then the fused pipeline is timed end to end and
both pipelines' steps around the network run on the fused network's logits.

Weights are random with BatchNorm calibrated on random images (no pretrained segmentation weights here); the
image is smooth colour structure plus noise, so the class map has regions and boundaries.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hrnet_fast  # noqa: E402
from benchmarks.script_support import command, emit  # noqa: E402
from hrnet_fast.bench.environment import environment  # noqa: E402
from hrnet_fast.segment import ops, reference  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODELS = {"w18": "seg_hrnetv2_w18", "w48": "seg_hrnetv2_w48"}
DEVICE = torch.device("cpu")  # --device


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def peak_bytes(fn: Callable[[], object]) -> int:
    """The peak of the bytes allocated through torch's CPU allocator while ``fn`` runs (module docstring); on a
    GPU, CUDA's peak allocated bytes during ``fn`` above those allocated before it."""
    from torch.profiler import ProfilerActivity, profile

    if DEVICE.type == "cuda":
        sync()
        base = torch.cuda.memory_allocated(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
        out = fn()
        sync()
        del out
        return torch.cuda.max_memory_allocated(DEVICE) - base

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, acc_events=True) as prof:
        out = fn()
        del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def frame(height: int, width: int) -> torch.Tensor:
    """uint8 [H, W, 3]: a few smooth colour blobs over ramps, plus noise (seeded)."""
    gen = torch.Generator().manual_seed(0)
    ys = torch.linspace(0, 1, height).view(height, 1, 1)
    xs = torch.linspace(0, 1, width).view(1, width, 1)
    image = 0.4 * ys + 0.3 * xs * torch.tensor([1.0, 0.2, 0.6])
    for _ in range(6):
        cy, cx, r = torch.rand(3, generator=gen)
        colour = torch.rand(3, generator=gen)
        image = image + colour * torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (0.02 + 0.05 * r))
    noise = 0.1 * torch.rand(height, width, 3, generator=gen)
    return (255 * (image + noise).clamp(0, 1)).to(torch.uint8)


class Capture:
    """The output of a module's last forward (the network's logits inside a Segmenter call)."""

    def __init__(self, module: torch.nn.Module):
        self.out = None
        module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.out = output


def measure_case(name: str, height: int, width: int, dtypes: List[str], reps: int, no_eager: List[str]) -> Dict:
    torch.manual_seed(0)
    model = hrnet_fast.create_model(MODELS[name], align_corners=False)
    hrnet_fast.calibrate_bn(model, (max(64, height // 4), max(64, width // 4)), steps=2, batch=1)
    model.to(DEVICE)
    image = frame(height, width)
    result: Dict = {"model": MODELS[name], "input": f"{height}x{width}", "classes": model.num_classes}
    fp32_labels = None
    for dtype_name in dtypes:
        result[dtype_name], labels = measure_dtype(model, image, DTYPES[dtype_name], reps, fp32_labels,
                                                   eager=dtype_name not in no_eager)
        fp32_labels = labels if dtype_name == "fp32" else fp32_labels
        print(f"{name} {height}x{width} {dtype_name}: {result[dtype_name]}", file=sys.stderr, flush=True)
    return result


@torch.no_grad()
def measure_dtype(model: torch.nn.Module, image: torch.Tensor, dtype: torch.dtype, reps: int, fp32_labels,
                  eager: bool) -> Tuple[Dict, torch.Tensor]:
    """One dtype's record, and the reference's class map (None without ``eager``)."""
    height, width = image.shape[:2]
    ref = hrnet_fast.Segmenter(model, fused=False, dtype=dtype)
    fused = hrnet_fast.Segmenter(model, dtype=dtype)
    ref_logits, fused_logits = Capture(ref.net), Capture(fused.net)
    t0 = time.perf_counter()
    fused(image)
    sync()
    warm_s = time.perf_counter() - t0
    ref_ms, fused_ms, out = [], [], {}

    def timed(name: str, seg) -> float:
        t = time.perf_counter()
        out[name] = seg(image)
        sync()
        return 1e3 * (time.perf_counter() - t)

    for _ in range(reps):  # interleaved, so a disturbance hits both
        if eager:
            ref_ms.append(timed("reference", ref))
        fused_ms.append(timed("fused", fused))
    fused_labels, lf = out["fused"], fused_logits.out
    # Without the eager network, the reference's steps run on the fused network's logits (same shape and dtype).
    ref_labels, lr = (out["reference"], ref_logits.out) if eager else (None, lf)
    batch = image[None].to(DEVICE)

    def post_ref():
        up = F.interpolate(lr, size=(height, width), mode="bilinear", align_corners=False)
        return reference.class_map(up, torch.uint8)

    def post_fused():
        return ops.resize_argmax(lf, height, width, False)

    def pre_ref():
        return reference.normalize(batch, ref.mean, ref.std, dtype)

    def pre_fused():
        return ops.normalize(batch, fused.mean, fused.std, dtype)

    def steps(ref_fn, fused_fn) -> Dict:
        return {"reference": {"ms": median_ms(ref_fn, reps), "peak_bytes": peak_bytes(ref_fn)},
                "fused": {"ms": median_ms(fused_fn, reps), "peak_bytes": peak_bytes(fused_fn)}}

    end_to_end = {"reference": statistics.median(ref_ms) if eager else None, "fused": statistics.median(fused_ms),
                  "fused_first_call_s": warm_s, "reps": reps}
    end_to_end["speedup"] = end_to_end["reference"] / end_to_end["fused"] if eager else None
    record = {"end_to_end_ms": end_to_end, "post_network": steps(post_ref, post_fused),
              "pre_network": steps(pre_ref, pre_fused)}
    post = record["post_network"]
    post["peak_ratio"] = post["fused"]["peak_bytes"] / post["reference"]["peak_bytes"]
    if not eager:
        record["agreement"] = None
    elif dtype == torch.float32:
        record["agreement"] = tie_check(ref_labels, fused_labels, lr, lf, height, width)
    elif fp32_labels is not None:
        record["agreement"] = {"fused_vs_fp32_reference": float((fused_labels == fp32_labels).float().mean()),
                               "eager_vs_fp32_reference": float((ref_labels == fp32_labels).float().mean())}
    return record, ref_labels


def tie_check(ref_labels: torch.Tensor, fused_labels: torch.Tensor, ref_logits: torch.Tensor,
              fused_logits: torch.Tensor, height: int, width: int) -> Dict:
    """The differing pixels and whether each is a tie (module docstring)."""
    bound = 2 * float((ref_logits.float() - fused_logits.float()).abs().max())
    differ = ref_labels != fused_labels
    out = {"pixels": ref_labels.numel(), "differ": int(differ.sum()), "tie_bound": bound,
           "logit_scale": float(ref_logits.float().abs().max())}
    if out["differ"]:
        scores = F.interpolate(ref_logits.float(), size=(height, width), mode="bilinear", align_corners=False)[0]
        r, f = ref_labels.long(), fused_labels.long()
        gaps = (scores.gather(0, r[None]) - scores.gather(0, f[None]))[0][differ].abs()
        out["max_gap"] = float(gaps.max())
        out["all_ties"] = bool(gaps.max() <= bound)
    else:
        out["max_gap"], out["all_ties"] = 0.0, True
    return out


def parse_cases(text: str) -> List[Tuple[str, int, int]]:
    cases = []
    for item in text.split(","):
        name, size = item.split(":")
        h, w = (int(v) for v in size.lower().split("x"))
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}: one of {', '.join(MODELS)}")
        cases.append((name, h, w))
    return cases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="w18:512x1024,w48:1024x2048", help="MODEL:HxW,... (models: w18, w48)")
    p.add_argument("--dtypes", default="fp32,bf16", help="fp32 first: bf16 agreement is against it")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-eager", default="", help="dtypes whose eager reference network is not run (e.g. bf16 on a "
                   "CPU without native bf16, where it takes minutes a frame): the fused pipeline end to end, and "
                   "both pipelines' steps around the network on the fused network's logits")
    p.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronised; CUDA's peak allocated bytes)")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dtypes = args.dtypes.split(",")
    started = time.time()
    env = environment(DEVICE)
    no_eager = [d for d in args.no_eager.split(",") if d]
    results = [measure_case(name, h, w, dtypes, args.reps, no_eager) for name, h, w in parse_cases(args.cases)]
    emit({"command": command(), "environment": env, "threads": args.threads, "wall_s": time.time() - started,
          "load_average_end": os.getloadavg()[0], "results": results}, args.json)


if __name__ == "__main__":
    main()
