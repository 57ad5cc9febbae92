"""HigherHRNet and HRNetV2 + OCR on the CPU: the converted model against its eager reference, batch 1, fp32, at
the official input size (HigherHRNet W32: 512x512; OCR W48: Cityscapes 1024x2048), interleaved call by call
(``hrnet_fast.timing``), median and p20/p80 milliseconds, and each output's relative error against eager.

    python benchmarks/cpu_task_heads.py --model higher_hrnet_w32 --input-size 512x512 --threads 2 --reps 7
    python benchmarks/cpu_task_heads.py --model seg_hrnetv2_w48_ocr --input-size 1024x2048 --threads 2 --reps 3

BN is calibrated once (``calibrate_bn``, at ``--calibrate-size``, a quarter of the pixels by default: the
statistics set the activations' scale, which does not depend on the image size).
"""
from __future__ import annotations

import argparse
import copy

import torch

import hrnet_fast
from hrnet_fast.bench.environment import environment, load_average
from hrnet_fast.calibrate import calibrate_bn
from hrnet_fast.timing import time_round_robin
from script_support import command, emit


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return (torch.linalg.vector_norm((y - ref).double()) / torch.linalg.vector_norm(ref.double())).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="higher_hrnet_w32")
    p.add_argument("--input-size", default="512x512", help="HxW")
    p.add_argument("--calibrate-size", default=None, help="HxW (default: half the input's height and width)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5, help="timed calls of each, interleaved")
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = (int(v) for v in args.input_size.lower().split("x"))
    ch, cw = (int(v) for v in args.calibrate_size.lower().split("x")) if args.calibrate_size else (h // 2, w // 2)
    model = calibrate_bn(hrnet_fast.create_model(args.model), (ch, cw), steps=1, batch=1).eval()
    fast = hrnet_fast.convert(copy.deepcopy(model))
    x = torch.randn(1, 3, h, w)
    with torch.inference_mode():
        eager_out, fast_out = model(x), fast(x)
    stats = time_round_robin({"eager": lambda: model(x), "converted": lambda: fast(x)}, warmup=1, reps=args.reps,
                             rewarm=False)
    result = dict(command=command(), model=args.model, input_size=[h, w], batch=1, dtype="fp32",
                  threads=args.threads, reps=args.reps, environment=environment(torch.device("cpu")),
                  load_average_1m_after=load_average(),
                  ms={name: s.as_dict() for name, s in stats.items()},
                  speedup_median=stats["eager"].median_ms / stats["converted"].median_ms,
                  rel_err_vs_eager=[rel_err(y, e) for y, e in zip(fast_out, eager_out)],
                  left_as_is=[f"{e.path}: {e.pattern}" for e in fast.fusion_report().unfused])
    emit(result, args.json)


if __name__ == "__main__":
    main()
