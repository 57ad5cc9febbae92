"""Compiles the pose ops' Triton kernels (kernels/crop_normalize.py, kernels/heatmap_decode.py) for sm_90 on a
machine without a GPU, exactly as launches on a top-down pose pipeline's shapes would (256x192 crops of a 480x640
image, 17 joints on 64x48 heatmaps), and prints one JSON record per variant: registers and spill bytes.

How a launch is reproduced is tests/gpu_static.py's: the public launcher runs on CPU tensors with the kernel's
``run`` replaced by a recorder, and the recorded arguments are compiled through Triton's own binder for
``GPUTarget("cuda", 90, 32)``. Must run without TRITON_INTERPRET (tests/test_crop_normalize.py and
tests/test_heatmap_decode.py run it in a subprocess):

    env -u TRITON_INTERPRET python tests/pose_gpu_static.py {crop_normalize,heatmap_decode}
"""
from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

from gpu_static import Recorder, compile_recorded  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def crop_launches():
    import hrnet_fast_kernels.crop_normalize as mod
    image = torch.zeros(480, 640, 3, dtype=torch.uint8)
    theta = torch.zeros(4, 2, 3)
    # Both layouts in fp16, one each in fp32 and bf16 (the dtype only changes the final cast).
    for name, channels_last in (("fp16", False), ("fp16", True), ("fp32", False), ("bf16", True)):
        yield mod._crop_normalize_kernel, f"{name} {'nhwc' if channels_last else 'nchw'} 4x256x192", \
            lambda: mod.crop_normalize(image, theta, 256, 192, [0.5] * 3, [0.2] * 3, DTYPES[name], channels_last)


def decode_launches():
    import hrnet_fast_kernels.heatmap_decode as mod
    centers, scales = torch.zeros(4, 2), torch.ones(4, 2)
    index = torch.arange(17)
    # Every variant in fp16; DARK (the largest kernel) in fp32 and bf16 too. The flip merge comes with the shift.
    variants = [(name, method, flip) for name in DTYPES for method in ("classic", "dark") for flip in (False, True)
                if name == "fp16" or (method == "dark" and (name == "fp32" or not flip))]
    for name, method, flip in variants:
        hm = torch.zeros(4, 17, 64, 48, dtype=DTYPES[name])
        yield mod._heatmap_decode_kernel, f"{name} {method}{' flip+shift' if flip else ''} 4x17x64x48", \
            lambda: mod.heatmap_decode(hm, centers, scales, method, hm if flip else None, index if flip else None,
                                       flip, 11)


def main(op: str) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("pose_gpu_static: run without TRITON_INTERPRET", file=sys.stderr)
        return 2
    cache = {}
    for kernel, label, call in {"crop_normalize": crop_launches, "heatmap_decode": decode_launches}[op]():
        recorder, original = Recorder(), kernel.run
        kernel.run = recorder
        try:
            call()
        finally:
            kernel.run = original
        (args, kwargs), = recorder.launches
        record = compile_recorded(kernel, args, kwargs, cache)
        print(json.dumps(dict(op=op, variant=label, registers=record["registers"],
                              spill_bytes=record["spill_bytes"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
