"""convert(): same outputs as the reference on every variant, backend, dtype and input size; clear errors."""
import copy
import os

import pytest
import torch
import torch.nn as nn

import hrnet_fast
from hrnet_fast.counting import count_forward
from hrnet_fast.ops.backends import availability
from tolerance import assert_model_matches as assert_matches, rel_err

SMALL = (64, 64)  # smallest valid size class: keeps every variant's forward quick on 2 cores


def calibrated(name, size=SMALL, **kwargs):
    torch.manual_seed(0)
    model = hrnet_fast.create_model(name, **kwargs)
    return hrnet_fast.calibrate_bn(model, size, steps=2, batch=2)


def live(backend, op="conv_bn_act"):
    ok, why = availability(backend, op, "cpu")
    if not ok:
        pytest.skip(f"backend {backend} not live here: {why}")


@pytest.mark.parametrize("name", hrnet_fast.list_models("classification"))
def test_every_variant_fp32_matches_reference(name):
    model = calibrated(name)
    x = torch.randn(4, 3, *SMALL, generator=torch.Generator().manual_seed(1))
    assert_matches(model, hrnet_fast.convert(model), x)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_backends_fp32(backend):
    live(backend)
    live(backend, "multires_fuse")
    model = calibrated("hrnet_w18_small")
    x = torch.randn(2, 3, *SMALL, generator=torch.Generator().manual_seed(2))
    assert_matches(model, hrnet_fast.convert(model, backend=backend), x)


INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
# The Triton interpreter cannot run bf16 tl.dot (tested below: it refuses with an error); GPUs run it.
HALF_CASES = [(b, d) for b in ("torch", "cpu", "triton") for d in (torch.float16, torch.bfloat16)
              if not (INTERPRETING and b == "triton" and d == torch.bfloat16)]


@pytest.mark.parametrize("backend,dtype", HALF_CASES)
def test_half_precision_within_twice_pytorch_error(backend, dtype):
    live(backend)
    live(backend, "multires_fuse")
    model = calibrated("hrnet_w18_small")
    x = torch.randn(2, 3, *SMALL, generator=torch.Generator().manual_seed(3))
    assert_matches(model, hrnet_fast.convert(model, dtype=dtype, backend=backend), x, dtype)


@pytest.mark.skipif(not INTERPRETING, reason="only the Triton interpreter lacks bf16 tl.dot")
def test_triton_interpreter_refuses_bf16_conv():
    fast = hrnet_fast.convert(calibrated("hrnet_w18_small"), dtype=torch.bfloat16, backend="triton")
    with pytest.raises(NotImplementedError, match="interpreter"):
        fast(torch.randn(1, 3, *SMALL, dtype=torch.bfloat16))


@pytest.mark.parametrize("size", [(224, 224), (256, 192), (288, 288)])
def test_input_sizes_match_timm(size):
    import timm
    ref = timm.create_model("hrnet_w18_small").eval()
    hrnet_fast.calibrate_bn(ref, size, steps=1, batch=2)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(4))
    assert_matches(ref, hrnet_fast.convert(ref), x)


@pytest.mark.parametrize("feature_location", ["incre", ""])
def test_features_only_timm_and_ours(feature_location):
    import timm
    for model in (timm.create_model("hrnet_w18_small", features_only=True, feature_location=feature_location),
                  hrnet_fast.create_model("hrnet_w18_small", features_only=True,
                                          feature_location=feature_location)):
        hrnet_fast.calibrate_bn(model, SMALL, steps=2, batch=2)
        x = torch.randn(2, 3, *SMALL, generator=torch.Generator().manual_seed(5))
        assert len(assert_matches(model, hrnet_fast.convert(model), x)) == 5


def test_official_repo_layout():
    """The official repo uses None on the fuse diagonal and for unchanged transitions, one shared stem ReLU."""
    model = calibrated("hrnet_w18_small")
    official = copy.deepcopy(model)
    for stage in (official.stage2, official.stage3, official.stage4):
        for module in stage:
            if isinstance(module.fuse_layers, nn.ModuleList):
                for i, terms in enumerate(module.fuse_layers):
                    terms[i] = None
    fast = hrnet_fast.convert(official)
    assert_matches(model, fast, torch.randn(2, 3, *SMALL))
    assert fast.fusion_report().counts()["hr fuse"] == 9


def test_generic_cnn_timm_resnet18():
    import timm
    model = timm.create_model("resnet18").eval()
    hrnet_fast.calibrate_bn(model, SMALL, steps=2, batch=2)
    fast = hrnet_fast.convert(model)
    assert_matches(model, fast, torch.randn(2, 3, *SMALL))
    counts = fast.fusion_report().counts()
    assert counts["conv+bn+add+relu"] == 8 and counts["conv+bn+relu"] == 8
    assert any(e.path == "conv1" for e in fast.fusion_report().unfused)  # the 7x7 stem: folded, listed


def test_report_lists_fused_and_unfused():
    fast = hrnet_fast.convert(calibrated("hrnet_w18_small"))
    report = fast.fusion_report()
    counts = report.counts()
    assert counts["basic block"] == 18 and counts["bottleneck block"] == 5 and counts["hr fuse"] == 9
    assert {e.pattern for e in report.unfused} == {"AdaptiveAvgPool2d", "Linear"}
    assert "hr fuse" in str(report)


def test_does_not_touch_the_model_unless_inplace():
    model = calibrated("hrnet_w18_small")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hrnet_fast.convert(model, dtype=torch.float16)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.conv1, nn.Conv2d)
    fast = hrnet_fast.convert(model, inplace=True)
    assert fast.inner is model and not isinstance(model.conv1, nn.Conv2d)


def test_dispatched_ops_drop():
    """Ops per W18 forward (aten and custom ops, as a TorchDispatchMode sees them): ~1,470 -> <= 400."""
    model = calibrated("hrnet_w18", (224, 224))
    x = torch.randn(1, 3, 224, 224)
    fast = hrnet_fast.convert(model)
    fast(x)  # the first call packs the CPU conv weights (once); count a steady-state forward
    ref_ops = count_forward(model, x).ops
    fast_ops = count_forward(fast, x).ops
    assert ref_ops >= 1400
    assert fast_ops <= 400


def test_torch_compile_and_export():
    model = calibrated("hrnet_w18_small")
    fast = hrnet_fast.convert(model)
    x = torch.randn(2, 3, *SMALL)
    # Compiled and exported graphs run the registered ops (ATen's convolution on CPU), the eager converted model
    # its kept oneDNN primitives: different implementations (and kernels, per CPU), each held to the rule
    # against the float64 truth, top-1 included.
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    assert_matches(model, compiled, x)
    exported = torch.export.export(fast.inner, (x.contiguous(memory_format=torch.channels_last),))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "hrnet_fast.conv_bn_act.default" in targets and "hrnet_fast.multires_fuse.default" in targets
    assert_matches(model, lambda t: exported.module()(t.contiguous(memory_format=torch.channels_last)), x)


# -- errors ---------------------------------------------------------------------------------------------------

def test_training_mode_is_refused():
    with pytest.raises(RuntimeError, match=r"eval\(\)"):
        hrnet_fast.convert(hrnet_fast.create_model("hrnet_w18_small"))


def test_call_time_errors():
    fast = hrnet_fast.convert(calibrated("hrnet_w18_small"))
    with pytest.raises(ValueError, match="3 input channels, got 4"):
        fast(torch.randn(1, 4, 64, 64))
    with pytest.raises(TypeError, match="float16"):
        fast(torch.randn(1, 3, 64, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match="cannot take a 70x70 input"):
        fast(torch.randn(1, 3, 70, 70))
    with pytest.raises(ValueError, match="4-D"):
        fast(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="is on cpu but the input is on meta"):
        fast(torch.randn(1, 3, 64, 64, device="meta"))


def test_convert_time_errors():
    model = calibrated("hrnet_w18_small")
    with pytest.raises(ValueError, match="unknown backend"):
        hrnet_fast.convert(model, backend="fastest")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run"):
        hrnet_fast.convert(model, backend="cuda")
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device"):
        hrnet_fast.convert(model, cuda_graph=True)
    with pytest.raises(TypeError, match="dtype must be"):
        hrnet_fast.convert(model, dtype=torch.float64)
    with pytest.raises(TypeError, match="nn.Module"):
        hrnet_fast.convert("hrnet_w18")


def test_outputs_do_not_require_grad():
    fast = hrnet_fast.convert(calibrated("hrnet_w18_small"))
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    assert not fast(x).requires_grad


# -- GPU --------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cuda_graph", [False, True])
@pytest.mark.parametrize("name", hrnet_fast.list_models("classification"))
def test_gpu_every_variant(name, dtype, cuda_graph):
    model = calibrated(name, (224, 224)).cuda()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    fast = hrnet_fast.convert(model, dtype=dtype, cuda_graph=cuda_graph)
    y1 = assert_matches(model, fast, x, dtype)[0]
    torch.testing.assert_close(fast(x.to(dtype)), y1, rtol=0, atol=0)  # replays give the same answer
    with torch.no_grad():
        assert torch.equal(y1.float().argmax(1), model(x).argmax(1))


@pytest.mark.gpu
def test_cuda_graph_outputs_are_not_overwritten():
    model = calibrated("hrnet_w18_small").cuda()
    fast = hrnet_fast.convert(model, cuda_graph=True)
    a, b = torch.randn(2, 1, 3, 64, 64, device="cuda")
    ya = fast(a)
    ya_copy = ya.clone()
    fast(b)
    torch.testing.assert_close(ya, ya_copy, rtol=0, atol=0)
    assert len(fast.graphs) == 1


def test_mmpretrain_layout():
    from mmpretrain_layout import ImageClassifier
    ref = calibrated("hrnet_w18_small")
    mm = ImageClassifier(copy.deepcopy(ref)).eval()
    x = torch.randn(2, 3, *SMALL)
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(mm(x), expected)  # the stand-in computes what the reference does
    fast = hrnet_fast.convert(mm)
    assert_matches(mm, fast, x)
    report = fast.fusion_report()
    assert report.counts()["hr fuse"] == 9
    assert {e.pattern for e in report.unfused} == {"GlobalAveragePooling", "Linear"}  # neck ConvModules fused
