"""What a converted model launches on a GPU: no per-call weight copies on a W18 forward, and every op on the
current stream of its tensors' device. GPU only (the CPU-visible parts are in test_weights.py and
test_cuda_graph.py)."""
from __future__ import annotations

import pytest
import torch

import hrnet_fast
from hrnet_fast import ops
from hrnet_fast.ops.reference import conv_bn_act_ref, multires_fuse_ref

pytestmark = pytest.mark.gpu

COPIES = ("aten::copy_", "aten::clone", "aten::contiguous")


def live_or_skip(backend):
    for op in ("conv_bn_act", "multires_fuse"):
        ok, why = ops.backends.availability(backend, op, "cuda")
        if not ok:
            pytest.skip(f"backend {backend} is not live: {why}")


@pytest.mark.parametrize("pad_channels", [1, None], ids=("unpadded", "padded"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_gpu_w18_forward_copies_no_weight(dtype, pad_channels):
    """A W18 forward on the cuda backend, kernel by kernel (no CUDA graph), dispatches no weight copy (the weights
    were stored channels_last at convert time; the input is already channels_last in the run dtype): unpadded no
    copy at all, with channel padding (the CUDA default) only the image's, into its zero-padded buffer. Prints the
    kernel count."""
    live_or_skip("cuda")
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(hrnet_fast.create_model("hrnet_w18"), (64, 64), steps=2, batch=2).cuda()
    fast = hrnet_fast.convert(model, dtype=dtype, backend="cuda", cuda_graph=False, pad_channels=pad_channels)
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    fast(x)  # first call: cuDNN decisions and algorithm choices
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        fast(x)
        torch.cuda.synchronize()
    events = prof.events()
    copies = [e.name for e in events if e.name in COPIES]
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"hrnet_w18 {dtype} batch 1, cuda backend: {len(kernels)} kernels per forward, {len(copies)} copies")
    assert copies == ([] if pad_channels == 1 else ["aten::copy_"])
    assert kernels, "the profiler saw no kernels"


def _delayed_inputs(stream, make):
    """Inputs that only hold their final values after a ~50 ms sleep queued on ``stream``: an op launched on any
    other stream reads the old values."""
    final = make()
    inputs = [torch.zeros_like(t) for t in final]
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)
        for t, f in zip(inputs, final):
            t.copy_(f)
    return inputs


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_ops_launch_on_the_current_stream(backend):
    live_or_skip(backend)
    torch.manual_seed(0)
    stream = torch.cuda.Stream()
    cl = torch.channels_last
    x, w, r = _delayed_inputs(stream, lambda: [torch.randn(2, 18, 28, 28, device="cuda").contiguous(memory_format=cl),
                                               torch.randn(36, 18, 3, 3, device="cuda") / 12,
                                               torch.randn(2, 36, 28, 28, device="cuda").contiguous(memory_format=cl)])
    with torch.cuda.stream(stream), torch.backends.cudnn.flags(allow_tf32=False):
        y = ops.conv_bn_act(x, w, None, stride=1, padding=1, residual=r, backend=backend)
        z = ops.multires_fuse(r, [], [y], backend=backend)
    stream.synchronize()
    with torch.backends.cudnn.flags(allow_tf32=False):
        y_ref = conv_bn_act_ref(x, w, None, stride=1, padding=1, residual=r, relu=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z, multires_fuse_ref(r, [], [y_ref], relu=True), rtol=1e-4, atol=1e-4)
