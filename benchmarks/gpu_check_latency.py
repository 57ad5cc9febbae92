"""gpu_check stage 'latency' (only with ``gpu_check.sh OUT --stage latency``: the default run's 'measure' stage
times these implementations and more, interleaved in one process): the seed's latency table through
``python -m hrnet_fast bench --json``.

On the GPU: HRNet-W18 and W48 at batch 1/8/32, FP32 and FP16, eager NCHW (the reference), eager channels_last,
converted; then converted with CUDA graphs; then torch.compile with the time left. Each run gets a share of the
stage's budget; the JSON keeps every run's figures (or why it did not finish). With the time left, the two
pipelines end to end on the GPU (benchmarks/pose_pipeline.py: pose W32, 1/8/32 people, fp32 and bf16;
benchmarks/seg_pipeline.py: HRNetV2-W18 at 512x1024 and W48 at 1024x2048), reference vs fused. Smoke mode:
W18-small at 64x64, batch 1, FP32, on the CPU, two timed calls."""
from __future__ import annotations

import json
import os
import sys
import tempfile

from gpu_check_common import SMOKE, run_command, stage_main

BENCH = ["-m", "hrnet_fast", "bench", "--json"]  # each run's command: these, the run's JSON path, its arguments
GPU_RUNS = [  # (name, command before the JSON path, arguments after it, share of the budget left when it starts)
    # --no-cuda-graph: the converted model launching kernel by kernel (a GPU's default is graphs).
    ("eager_and_converted", BENCH, ["--models", "w18,w48", "--batch", "1,8,32", "--dtype", "fp32,fp16",
                             "--peers", "channels_last", "--no-cuda-graph", "--min-time", "0.5"], 0.5),
    ("converted_cuda_graph", BENCH, ["--models", "w18,w48", "--batch", "1,8,32", "--dtype", "fp32,fp16", "--cuda-graph",
                              "--min-time", "0.5"], 0.6),
    ("compile", BENCH, ["--models", "w18", "--batch", "1,8,32", "--dtype", "fp16", "--peers", "compile",
                        "--min-time", "0.5"], 0.4),
    ("pose_pipeline", ["benchmarks/pose_pipeline.py", "--json"], ["--device", "cuda", "--people", "1,8,32",
                                                                   "--dtypes", "fp32,bf16", "--min-time", "0.5"], 0.5),
    ("seg_pipeline", ["benchmarks/seg_pipeline.py", "--json"], ["--device", "cuda", "--dtypes", "fp32,bf16",
                                                                 "--reps", "3"], 1.0),
]
MIN_RUN_S = 20 if not SMOKE else 5
SMOKE_RUNS = [("eager_and_converted", BENCH, ["--models", "w18_small", "--batch", "1", "--dtype", "fp32", "--device", "cpu",
                                       "--input-size", "64", "--peers", "channels_last", "--reps", "2",
                                       "--warmup", "0"], 1.0)]


def body(stage, args) -> None:
    runs = stage.record["runs"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Triton's choices persist across the runs (they share tuning keys): later runs skip the timing.
        env = {"HRNET_FAST_TUNING_CACHE": os.path.join(tmp, "tuning.json")}
        for name, command, extra, share in (SMOKE_RUNS if SMOKE else GPU_RUNS):
            budget = stage.remaining() * share
            if budget < MIN_RUN_S:
                runs[name] = {"skipped": f"budget: {budget:.0f} s of the stage's budget left"}
                stage.cut(f"run {name} not reached")
                continue
            path = os.path.join(tmp, f"{name}.json")
            run = run_command([sys.executable, *command, path, *extra], budget, env)
            if run.get("rc") == 0:
                del run["output_tail"]  # the run's JSON holds the figures
            elif run.get("timed_out"):
                stage.cut(f"run {name} stopped by its share of the budget")
            if os.path.exists(path):
                with open(path) as f:
                    run["result"] = json.load(f)
            runs[name] = run
            stage.save()
    first = runs[(SMOKE_RUNS if SMOKE else GPU_RUNS)[0][0]]
    if first.get("rc") not in (0, None):
        stage.fail(f"the eager and converted run exited {first.get('rc')}")


if __name__ == "__main__":
    sys.exit(stage_main("latency", body))
