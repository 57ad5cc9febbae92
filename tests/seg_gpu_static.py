"""Compiles the segmentation ops' Triton kernels (kernels/seg_normalize.py, kernels/resize_argmax.py) for sm_90
without a GPU, as their launchers would launch them on a Cityscapes-sized call, and prints registers and spills
per variant as JSON. Must run without TRITON_INTERPRET (tests/test_seg_static_gpu.py runs it in a subprocess):

    env -u TRITON_INTERPRET python tests/seg_gpu_static.py
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_static import Recorder, compile_recorded  # noqa: E402


def records():
    import torch

    import hrnet_fast_kernels.resize_argmax as ra
    import hrnet_fast_kernels.seg_normalize as sn
    out, cache = [], {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for channels_last in (False, True):
            recorder, original = Recorder(), sn._seg_normalize_kernel.run
            sn._seg_normalize_kernel.run = recorder
            try:
                sn.seg_normalize(torch.empty(1, 1024, 2048, 3, dtype=torch.uint8), [0.5] * 3, [0.25] * 3, dtype,
                                 channels_last)
            finally:
                sn._seg_normalize_kernel.run = original
            (args, kwargs), = recorder.launches
            rec = compile_recorded(sn._seg_normalize_kernel, args, kwargs, cache)
            out.append(dict(kernel="seg_normalize", dtype=str(dtype), channels_last=channels_last, **rec))
        for classes, with_prob in ((19, False), (19, True), (150, True)):
            recorder, original = Recorder(), ra._resize_argmax_kernel.run
            ra._resize_argmax_kernel.run = recorder
            try:
                ra.resize_argmax(torch.empty(1, classes, 256, 512, dtype=dtype), 1024, 2048, False, with_prob,
                                 torch.uint8)
            finally:
                ra._resize_argmax_kernel.run = original
            (args, kwargs), = recorder.launches
            rec = compile_recorded(ra._resize_argmax_kernel, args, kwargs, cache)
            out.append(dict(kernel="resize_argmax", dtype=str(dtype), classes=classes, with_prob=with_prob, **rec))
    return out


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("run without TRITON_INTERPRET")
    print(json.dumps(records()))
