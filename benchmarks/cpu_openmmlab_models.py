"""Converted vs eager on CPU for the segmentation and Lite-HRNet layouts the converter recognises by structure:
the official segmentation HRNet as shipped (SyncBN; W18 and W48), mmsegmentation's FCN-HRNet W18 (SyncBN) and
mmpose's Lite-HRNet-18, each built from the tests' equivalents of the upstream classes (tests/official_hrnet.py,
tests/mmseg_hrnet.py, tests/lite_hrnet.py) with calibrated random weights.

    python benchmarks/cpu_openmmlab_models.py --threads 2 --json benchmarks/results/cpu-2threads-openmmlab-models.json

Per case: the converted model's relative error against the eager forward on the timed input and the share of
pixels (or heatmap peaks) with the same argmax, what the fusion report left, and the median, p20 and p80 of eager
and converted forwards timed interleaved in one process (so load drifts hit both), with the speedup of the medians.
The 1-minute load average at start and end is recorded: on a shared machine, compare ratios, not milliseconds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn

import hrnet_fast
from script_support import command, emit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the upstream-equivalent classes

from bn_forms import replace_batchnorms  # noqa: E402
from lite_hrnet import LITE_HRNET_18, LiteHRNetPose  # noqa: E402
from mmseg_hrnet import EncoderDecoder  # noqa: E402
from official_hrnet import OfficialHRNet, extra  # noqa: E402

# name -> (builder, calibration size, whether its BNs become SyncBatchNorm as its config builds them)
MODELS: Dict[str, Tuple[Callable[[], nn.Module], Tuple[int, int], bool]] = {
    "official_seg_w18": (lambda: OfficialHRNet(extra(18), "segmentation", 19), (64, 128), True),
    "official_seg_w48": (lambda: OfficialHRNet(extra(48), "segmentation", 19), (64, 128), True),
    "mmseg_fcn_hrnet_w18": (lambda: EncoderDecoder(extra(18), 19), (64, 128), True),
    "lite_hrnet_18": (lambda: LiteHRNetPose(LITE_HRNET_18), (128, 96), False),
}
DEFAULT_CASES = "official_seg_w18:512x1024,official_seg_w48:512x1024,mmseg_fcn_hrnet_w18:512x1024,lite_hrnet_18:256x192"


def _first(y):
    return y[0] if isinstance(y, (tuple, list)) else y


def _quantiles(ts):
    ts = sorted(t * 1e3 for t in ts)
    return {"median_ms": statistics.median(ts), "p20_ms": ts[int(0.2 * (len(ts) - 1))],
            "p80_ms": ts[int(0.8 * (len(ts) - 1))]}


def measure(name: str, size: Tuple[int, int], reps: int) -> Dict:
    build, calibration, sync_bn = MODELS[name]
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(build(), calibration, steps=2, batch=2)
    if sync_bn:
        model = replace_batchnorms(model, "SyncBatchNorm")
    model.eval()
    fast = hrnet_fast.convert(model)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, y = _first(model(x)), _first(fast(x))
        rel = (torch.linalg.vector_norm(y - ref) / torch.linalg.vector_norm(ref)).item()
        decide = (lambda t: t.flatten(2).argmax(-1)) if name.startswith("lite") else (lambda t: t.argmax(1))
        agree = (decide(y) == decide(ref)).float().mean().item()  # heatmap peaks; pixel classes
        times = {"eager": [], "converted": []}
        calls = {"eager": lambda: model(x), "converted": lambda: fast(x)}
        for f in calls.values():
            f()  # first calls: oneDNN primitives made, replay steps listed
            f()
        for _ in range(reps):
            for k, f in calls.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    report = fast.fusion_report()
    out = {k: _quantiles(v) for k, v in times.items()}
    return {"model": name, "input": f"{size[0]}x{size[1]}", "batch": 1, "rel_error_vs_eager": rel,
            "argmax_agreement": agree, "fused": sum(report.counts().values()),
            "left": sorted({e.pattern for e in report.unfused}), **out,
            "speedup": out["eager"]["median_ms"] / out["converted"]["median_ms"]}


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=DEFAULT_CASES, help="name:HxW,... (names: " + ", ".join(MODELS) + ")")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"command": command(), "torch": torch.__version__, "cpu": _cpu_name(),
              "threads": args.threads, "load_1min_start": os.getloadavg()[0], "results": []}
    for case in args.cases.split(","):
        name, size = case.split(":")
        h, w = (int(s) for s in size.split("x"))
        r = measure(name, (h, w), args.reps)
        print(f"{name} {size}: eager {r['eager']['median_ms']:.1f} ms, converted {r['converted']['median_ms']:.1f} ms,"
              f" {r['speedup']:.2f}x, rel err {r['rel_error_vs_eager']:.1e}, load {os.getloadavg()[0]:.1f}",
              file=sys.stderr)
        result["results"].append(r)
    result["load_1min_end"] = os.getloadavg()[0]
    emit(result, args.json)


if __name__ == "__main__":
    main()
