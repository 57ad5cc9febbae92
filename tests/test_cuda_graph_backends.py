"""A converted model on the triton and torch backends, replayed from CUDA graphs. GPU only.

The cuda backend (the default on a GPU) is replayed by test_convert.py's test_gpu_every_variant; the Triton
kernels need a test of their own there, since nothing else captures them: their first call per shape compiles
(and may time configs), which must happen in the warm-up run, never inside the capture.
"""
from __future__ import annotations

import pytest
import torch

import hrnet_fast
from hrnet_fast.ops.backends import availability
from tolerance import assert_model_matches


@pytest.mark.gpu
@pytest.mark.parametrize("backend, dtype", [("triton", torch.float32), ("triton", torch.float16),
                                            ("triton", torch.bfloat16), ("torch", torch.float16)],
                         ids=lambda v: str(v))
def test_gpu_backend_replays_from_a_cuda_graph(backend, dtype):
    for op in ("conv_bn_act", "multires_fuse"):
        live, why = availability(backend, op, "cuda")
        if not live:
            pytest.skip(f"backend {backend} is not live for {op} on cuda: {why}")
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(hrnet_fast.create_model("hrnet_w18_small"), (64, 64), steps=2, batch=2).cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    fast = hrnet_fast.convert(model, dtype=dtype, backend=backend, cuda_graph=True)
    first = assert_model_matches(model, fast, x, dtype)[0]
    replayed = fast(x.to(dtype))
    assert len(fast.graphs) == 1, "one input shape must give one captured graph"
    torch.testing.assert_close(replayed, first, rtol=0, atol=0)  # a replay computes what the capture ran
