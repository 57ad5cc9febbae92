"""Top-down pose end to end, the reference pipeline beside the fused one: one image, K people, images/s and ms per
person, and the fused pipeline's time split into pre-processing (crops), network and post-processing (decoding).

    python benchmarks/pose_pipeline.py --people 1,8,32 --dtypes fp32,bf16 --threads 2 --json out.json
    python benchmarks/pose_pipeline.py --device cuda --dtypes fp16,bf16 --json gpu.json

Reference: ``TopDownPose(model, fused=False)``: the eager model, the plain-PyTorch crop, and decoding on the host
as mmpose does. Fused: ``TopDownPose(model)``: ``convert()``-ed model, ``crop_normalize`` and ``heatmap_decode``.
Both run pose W32 (BN calibrated at the crop size) on the same seeded image and boxes, interleaved call by call
(``hrnet_fast.timing``, median and p20/p80 milliseconds). Each row also records how far the fused keypoints are
from the reference's and how many joints have a different heatmap argmax (the classic keypoint's integer part).
"""
from __future__ import annotations

import argparse
import copy
import os

import torch

import hrnet_fast
from hrnet_fast import cpu_features
from hrnet_fast.calibrate import calibrate_bn
from hrnet_fast.pose.decode import flip_back
from hrnet_fast.timing import time_round_robin
from script_support import command, emit

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def scene(people: int, height: int, width: int, seed: int = 0):
    """A seeded uint8 RGB image and ``people`` boxes inside it (some reaching past its edge)."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=gen)
    x1 = torch.rand(people, generator=gen) * width * 0.8 - width * 0.05
    y1 = torch.rand(people, generator=gen) * height * 0.6 - height * 0.05
    w = 40 + torch.rand(people, generator=gen) * width * 0.3
    h = 80 + torch.rand(people, generator=gen) * height * 0.4
    return image, torch.stack((x1, y1, x1 + w, y1 + h), dim=1)


def merged_argmax(pose, heatmaps):
    """[K, J] flat argmax of the heatmaps the decoder reads (flipped ones merged in)."""
    K = heatmaps.shape[0] // (2 if pose.flip_test else 1)
    hm = heatmaps[:K].float()
    if pose.flip_test:
        hm = flip_back(hm, heatmaps[K:].float(), pose.flip_index, pose.shift_heatmap)
    return hm.flatten(2).argmax(-1)


def stats_dict(s, people: int):
    return {"median_ms": round(s.median_ms, 2), "p20_ms": round(s.p20_ms, 2), "p80_ms": round(s.p80_ms, 2),
            "reps": s.reps, "images_per_s": round(1e3 / s.median_ms, 3),
            "ms_per_person": round(s.median_ms / people, 2)}


def cell(model, dtype, people, args, size):
    image, boxes = (t.to(args.device) for t in scene(people, *args.image))
    options = dict(input_size=size, flip_test=not args.no_flip, decode=args.decode)
    reference = hrnet_fast.TopDownPose(copy.deepcopy(model).to(dtype), fused=False, **options)
    fused = hrnet_fast.TopDownPose(hrnet_fast.convert(model, dtype=dtype), **options)
    with torch.inference_mode():
        (ref_k, ref_s), (fus_k, fus_s) = reference(image, boxes), fused(image, boxes)
        batch = fused.preprocess([image], [boxes])
        heatmaps = fused.forward(batch.crops)
        ref_batch = reference.preprocess([image], [boxes])
        peaks = [merged_argmax(p, p.forward(b.crops)) for p, b in ((reference, ref_batch), (fused, batch))]
    rows = time_round_robin({"reference": lambda: reference(image, boxes), "fused": lambda: fused(image, boxes)},
                            args.device, warmup=1, reps=args.reps, min_time=args.min_time, min_reps=2, rewarm=False)
    split = time_round_robin({"pre": lambda: fused.preprocess([image], [boxes]),
                              "network": lambda: fused.forward(batch.crops),
                              "post": lambda: fused.postprocess(heatmaps, batch)},
                             args.device, warmup=1, reps=args.reps, min_time=args.min_time / 4, min_reps=2,
                             rewarm=False)
    total = sum(s.median_ms for s in split.values())
    return {"dtype": args.dtype_name, "people": people,
            "reference": stats_dict(rows["reference"], people), "fused": stats_dict(rows["fused"], people),
            "speedup": round(rows["reference"].median_ms / rows["fused"].median_ms, 3),
            "fused_split_ms": {k: round(s.median_ms, 2) for k, s in split.items()},
            "fused_pre_post_share": round((split["pre"].median_ms + split["post"].median_ms) / total, 4),
            "max_keypoint_diff_px": float((fus_k - ref_k).abs().max()),
            "argmax_mismatches": int((peaks[0] != peaks[1]).sum()), "joints": int(peaks[0].numel()),
            "max_score_diff": float((fus_s - ref_s).abs().max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pose_hrnet_w32")
    p.add_argument("--input-size", default="256x192", help="crop HxW")
    p.add_argument("--image", default="480x640", help="image HxW")
    p.add_argument("--people", default="1,8,32", help="comma-separated person counts")
    p.add_argument("--dtypes", default="fp32,bf16", help=f"comma-separated, of {', '.join(DTYPES)}")
    p.add_argument("--decode", default="classic", choices=("classic", "dark"))
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu", help="cpu or cuda (the same cells timed on a GPU)")
    p.add_argument("--reps", type=int, help="exact timed calls per pipeline (default: until --min-time)")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of timed calls per pipeline")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.input_size.lower().split("x"))
    args.image = tuple(int(v) for v in args.image.lower().split("x"))
    torch.manual_seed(0)
    base = calibrate_bn(hrnet_fast.create_model(args.model), size, steps=1, batch=2).eval().to(args.device)
    rows = []
    for name in args.dtypes.split(","):
        args.dtype_name = name
        for people in (int(v) for v in args.people.split(",")):
            rows.append(cell(base, DTYPES[name], people, args, size))
            print(f"{name} {people} people: reference {rows[-1]['reference']['median_ms']} ms, fused "
                  f"{rows[-1]['fused']['median_ms']} ms ({rows[-1]['speedup']}x), pre+post "
                  f"{100 * rows[-1]['fused_pre_post_share']:.1f} % of fused", flush=True)
    emit({"command": command(), "model": args.model, "input_size": list(size), "image": list(args.image),
          "flip_test": not args.no_flip, "decode": args.decode, "threads": args.threads, "torch": torch.__version__,
          "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_features.summary(),
          "loadavg_after": os.getloadavg()[0], "rows": rows}, args.json)


if __name__ == "__main__":
    main()
