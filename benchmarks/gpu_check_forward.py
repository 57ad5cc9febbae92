"""A small converted HRNet forward per GPU backend and dtype, checked against the reference: the program the
'sanitizer' stage runs under compute-sanitizer memcheck. So it is small: HRNet-W18-small (every kernel variant a
full model launches: 1x1 and 3x3, stride 2, residual epilogues, fusions up and down) at 64x64, batch 2; the
reference runs on the CPU (cuDNN's kernels are not what is checked, and loading them under the sanitizer is slow);
Triton's configs are not timed (``HRNET_FAST_TUNING=off``: timing under the sanitizer means nothing). Prints one
line per forward as it ends, so a run cut by its timeout still says which forwards were checked.

    python benchmarks/gpu_check_forward.py [--cpu]    # --cpu: the cpu backend (smoke mode)
"""
from __future__ import annotations

import os
import sys

os.environ["HRNET_FAST_TUNING"] = "off"  # before any kernel module reads it

import torch  # noqa: E402

import hrnet_fast  # noqa: E402
from hrnet_fast.calibrate import calibrate_bn  # noqa: E402

# (backend, dtype) per forward, the GPU's and the smoke run's.
GPU_FORWARDS = [("cuda", torch.float16), ("triton", torch.float16), ("cuda", torch.float32)]
CPU_FORWARDS = [("cpu", torch.float32)]
# A wrong answer (an unwritten output, a bad index) shows as a large error; rounding stays far below these.
LIMIT = {torch.float32: 1e-3, torch.float16: 5e-2}


def main() -> int:
    cuda = torch.cuda.is_available() and "--cpu" not in sys.argv
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model = calibrate_bn(hrnet_fast.create_model("hrnet_w18_small"), (64, 64), steps=1, batch=2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).float()
    model = model.to(device)
    ok = True
    for backend, dtype in (GPU_FORWARDS if cuda else CPU_FORWARDS):
        fast = hrnet_fast.convert(model, dtype=dtype, backend=backend, cuda_graph=False)
        with torch.no_grad():
            y = fast(x.to(device, dtype)).float().cpu()
        err = float((y - ref).norm() / ref.norm())
        print(f"forward {backend} {dtype}: relative error {err:.2e} (limit {LIMIT[dtype]:g})", flush=True)
        ok = ok and err < LIMIT[dtype]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
