"""gpu_check stage 'ops': the fused ops on HRNet-W18's own calls, each beside what it replaces.

- Copy bandwidth: a 1 GiB device-to-device copy, bytes read + written over the median time (the ceiling).
- multires_fuse on every W18 fusion call at batch 32, FP16 channels_last: GB/s (each input read once, the output
  written once) per live backend and for the eager composition (upsample, add, ReLU), against the copy bandwidth.
- conv_bn_act on every W18 conv call at batch 8, FP16 channels_last: median/p20/p80 per live backend, beside
  cuDNN conv -> BN -> (+residual) -> ReLU as eager PyTorch runs it, and the ratio. Triton's first call per shape
  compiles and times its candidate configs (outside the timed calls); calls run most-called first, and those the
  budget does not reach are listed as skipped.
Implementations of one call are timed interleaved (hrnet_fast.timing). Smoke mode: 64x64 input, batch 1, FP32 on
the CPU, two timed calls, the cpu backend beside eager.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from gpu_check_common import DEVICE, SMOKE, stage_main

INPUT_SIZE = (64, 64) if SMOKE else (224, 224)
DTYPE = torch.float32 if SMOKE else torch.float16
FUSE_BATCH, CONV_BATCH = (1, 1) if SMOKE else (32, 8)
TIMING = dict(reps=2, warmup=0) if SMOKE else dict(min_time=0.1, warmup=2)
REPEAT = 1 if SMOKE else 10
MIN_ROW_S = 2.0  # a call is not started with less of the budget left (its Triton compile alone may take that)


def _time(fns):
    """Interleaved timing (hrnet_fast.timing); on the GPU each timed sample is REPEAT back-to-back calls, divided
    back, so the synchronisation around a sample does not swamp kernels of a few microseconds."""
    from hrnet_fast.timing import TimingStats, time_round_robin
    repeated = {k: (lambda f=f: [f() for _ in range(REPEAT)]) for k, f in fns.items()}
    timed = time_round_robin(repeated, DEVICE, **TIMING)
    return {k: TimingStats(t.median_ms / REPEAT, t.p20_ms / REPEAT, t.p80_ms / REPEAT, t.reps * REPEAT)
            for k, t in timed.items()}


def _live(op):
    from hrnet_fast.ops.backends import availability
    candidates = ("cpu",) if SMOKE else ("triton", "cuda")
    return [b for b in candidates if availability(b, op, DEVICE.type)[0]]


def _cl(*shape):
    return torch.randn(*shape, device=DEVICE, dtype=DTYPE).contiguous(memory_format=torch.channels_last)


def copy_bandwidth():
    n = (1 << 20) if SMOKE else (1 << 30)
    src = torch.empty(n, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    t = _time({"copy": lambda: dst.copy_(src)})["copy"]
    return {"bytes": 2 * n, **t.as_dict(), "GBps": 2 * n / (t.median_ms * 1e6)}


def fuse_rows(fuses, copy_gbps, stage):
    from hrnet_fast import ops
    from hrnet_fast.ops.reference import multires_fuse_ref
    rows = []
    for f in fuses:
        if stage.remaining() < MIN_ROW_S:
            rows.append({"call": f, "skipped": "budget"})
            continue
        x = _cl(FUSE_BATCH, f["c"], f["h"], f["w"])
        low = [_cl(FUSE_BATCH, f["c"], h, w) for h, w in f["low"]]
        same = [_cl(FUSE_BATCH, f["c"], f["h"], f["w"]) for _ in range(f["same"])]
        moved = sum(t.numel() * t.element_size() for t in [x, x, *low, *same])  # inputs read + output written
        fns = {"eager": lambda: multires_fuse_ref(x, low, same, relu=True)}
        for b in _live("multires_fuse"):
            fns[b] = lambda b=b: ops.multires_fuse(x, low, same, relu=True, backend=b)
        timed = _time(fns)
        rows.append({"call": f, "batch": FUSE_BATCH, "bytes": moved, "impls": {
            k: {**t.as_dict(), "GBps": moved / (t.median_ms * 1e6), "of_copy": moved / (t.median_ms * 1e6) / copy_gbps}
            for k, t in timed.items()}})
    return rows


def conv_rows(convs, stage):
    from hrnet_fast import ops
    rows = []
    for s in convs:
        if stage.remaining() < MIN_ROW_S:
            rows.append({"call": s, "skipped": "budget"})
            continue
        conv = torch.nn.Conv2d(s["cin"], s["cout"], s["k"], s["stride"], s["padding"], bias=False)
        bn = torch.nn.BatchNorm2d(s["cout"]).eval()
        with torch.no_grad():
            bn.running_var.uniform_(0.5, 2.0)
            bn.running_mean.normal_()
        eager = torch.nn.Sequential(conv, bn).to(DEVICE, DTYPE).to(memory_format=torch.channels_last).eval()
        weight, bias = ops.fold_bn(conv, bn)
        weight, bias = weight.to(DEVICE, DTYPE), bias.to(DEVICE, DTYPE)
        x = _cl(CONV_BATCH, s["cin"], s["h"], s["w"])
        ho = (s["h"] + 2 * s["padding"] - s["k"]) // s["stride"] + 1
        wo = (s["w"] + 2 * s["padding"] - s["k"]) // s["stride"] + 1
        r = _cl(CONV_BATCH, s["cout"], ho, wo) if s["residual"] else None

        def eager_fn():
            y = eager(x)
            y = y + r if r is not None else y
            return F.relu(y) if s["relu"] else y
        fns = {"eager_cudnn" if not SMOKE else "eager": eager_fn}
        for b in _live("conv_bn_act"):
            fns[b] = lambda b=b: ops.conv_bn_act(x, weight, bias, stride=s["stride"], padding=s["padding"],
                                                 residual=r, relu=s["relu"], backend=b)
        with torch.inference_mode():
            timed = _time(fns)
        flops = 2 * CONV_BATCH * ho * wo * s["cout"] * s["cin"] * s["k"] ** 2
        base = next(iter(timed.values())).median_ms
        rows.append({"call": s, "batch": CONV_BATCH, "flops": flops, "impls": {
            k: {**t.as_dict(), "TFLOPs": flops / (t.median_ms * 1e9), "speedup_vs_eager": base / t.median_ms}
            for k, t in timed.items()}})
    return rows


def body(stage, args) -> None:
    from w18_calls import w18_calls
    torch.manual_seed(0)
    convs, fuses = w18_calls(INPUT_SIZE)
    # Most-called first: if the budget runs out, the calls that dominate a forward have been timed.
    convs.sort(key=lambda s: -s["count"])
    fuses.sort(key=lambda f: -f["count"])
    rec = stage.record
    rec.update(dtype=str(DTYPE), layout="channels_last", copy=copy_bandwidth())
    stage.save()
    rec["multires_fuse"] = fuse_rows(fuses, rec["copy"]["GBps"], stage)
    stage.save()
    rec["conv_bn_act"] = conv_rows(convs, stage)
    skipped = sum(1 for r in rec["multires_fuse"] + rec["conv_bn_act"] if "skipped" in r)
    if skipped:
        stage.cut(f"{skipped} of {len(fuses) + len(convs)} calls not reached")


if __name__ == "__main__":
    sys.exit(stage_main("ops", body))
