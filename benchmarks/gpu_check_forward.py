"""A small converted HRNet forward on every GPU backend, checked against the reference: the program the
'sanitizer' stage runs under compute-sanitizer memcheck (so it is small: W18 at 64x64, batch 2; Triton's configs
are not timed, ``HRNET_FAST_TUNING=off``, since timing under the sanitizer means nothing).

    python benchmarks/gpu_check_forward.py [--cpu]    # --cpu: hrnet_w18_small on the cpu backend (smoke mode)
"""
from __future__ import annotations

import os
import sys

import torch

import hrnet_fast
from hrnet_fast.calibrate import calibrate_bn


def main() -> int:
    cuda = torch.cuda.is_available() and "--cpu" not in sys.argv
    device = torch.device("cuda" if cuda else "cpu")
    os.environ["HRNET_FAST_TUNING"] = "off"
    torch.manual_seed(0)
    model = hrnet_fast.create_model("hrnet_w18" if cuda else "hrnet_w18_small").to(device)
    calibrate_bn(model, (64, 64), steps=1, batch=2)
    model.eval()
    x = torch.randn(2, 3, 64, 64, device=device)
    with torch.no_grad():
        ref = model(x).float()
    backends = ["triton", "cuda"] if cuda else ["cpu"]
    dtypes = [torch.float32, torch.float16] if cuda else [torch.float32]
    # A wrong answer (an unwritten output, a bad index) shows as a large error; rounding stays far below these.
    limit = {torch.float32: 1e-3, torch.float16: 5e-2}
    ok = True
    for backend in backends:
        for dtype in dtypes:
            fast = hrnet_fast.convert(model, dtype=dtype, backend=backend)
            with torch.no_grad():
                y = fast(x.to(dtype)).float()
            err = float((y - ref).norm() / ref.norm())
            print(f"forward {backend} {dtype}: relative error {err:.2e} (limit {limit[dtype]:g})", flush=True)
            ok = ok and err < limit[dtype]
    if cuda:
        torch.cuda.synchronize()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
