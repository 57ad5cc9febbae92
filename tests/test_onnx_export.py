"""ONNX export of converted models and of the fused ops (``torch.onnx.export(..., dynamo=True)``), run in ONNX
Runtime and compared with the PyTorch outputs."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import hrnet_fast
from hrnet_fast import ops
from hrnet_fast.ops import onnx_translation
from tiny_hrnet import TINY
from tolerance import assert_matches_reference

ort = pytest.importorskip("onnxruntime")  # a test dependency; onnxscript too (pyproject's test extra)
pytest.importorskip("onnxscript")

SMALL = (64, 64)


def calibrated(**kwargs):
    torch.manual_seed(0)
    return hrnet_fast.calibrate_bn(hrnet_fast.create_model("hrnet_w18_small", **kwargs), SMALL, steps=2, batch=2)


def run_onnx(module, inputs, path, **export_kwargs):
    """Exports ``module`` with the dynamo exporter, runs the file in ONNX Runtime (CPU), returns its outputs."""
    program = torch.onnx.export(module.eval(), tuple(inputs), dynamo=True, verbose=False, **export_kwargs)
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)], program


def rel_err(y, ref):
    return (torch.linalg.vector_norm(y.double() - ref.double()) / torch.linalg.vector_norm(ref.double())).item()


def assert_as_close_as_eager(model, onnx_outs, x):
    """ONNX Runtime's outputs against a float64 truth: at most twice eager fp32's error plus the fp32 floor, and
    the same top-1 for logits (the tolerance rule of DESIGN.md)."""
    with torch.no_grad():
        truth = model.double()(x.double())
        eager = model.float()(x)
    truth, eager = ([truth], [eager]) if isinstance(truth, torch.Tensor) else (truth, eager)
    assert len(onnx_outs) == len(truth)
    for y, t, e in zip(onnx_outs, truth, eager):
        assert y.shape == t.shape
        assert rel_err(y, t) <= 2 * rel_err(e, t) + 1e-5
        if y.dim() == 2:
            assert torch.equal(y.argmax(1), e.argmax(1))


def test_converted_classifier_exports_with_a_plain_call_and_runs_in_onnxruntime(tmp_path):
    model = calibrated()
    fast = hrnet_fast.convert(model)
    x = torch.randn(2, 3, *SMALL, generator=torch.Generator().manual_seed(1))
    outs, program = run_onnx(fast, [x], tmp_path / "w18_small.onnx")
    nodes = program.model_proto.graph.node
    assert {n.domain for n in nodes} <= {"", "ai.onnx"} and not program.model_proto.functions  # standard ops only
    assert {"Conv", "Resize", "Relu", "Add"} <= {n.op_type for n in nodes}
    torch.testing.assert_close(outs[0], fast(x), rtol=1e-4, atol=1e-4)
    assert_as_close_as_eager(model, outs, x)


def test_converted_feature_extractor_exports(tmp_path):
    model = calibrated(features_only=True)
    fast = hrnet_fast.convert(model)
    x = torch.randn(1, 3, *SMALL, generator=torch.Generator().manual_seed(2))
    outs, _ = run_onnx(fast, [x], tmp_path / "features.onnx")
    assert [o.shape[1] for o in outs] == fast.feature_info.channels()
    assert_as_close_as_eager(model, outs, x)


def tiny_task_model(task):
    """A calibrated model of ``task`` on the tiny layout (one module per stage): exports in seconds."""
    torch.manual_seed(0)
    model, size = {"classification": (hrnet_fast.HighResolutionNet(TINY), SMALL),
                   "pose": (hrnet_fast.PoseHighResolutionNet(TINY), (64, 32)),
                   "segmentation": (hrnet_fast.SegHighResolutionNet(TINY, num_classes=5), (36, 52))}[task]
    return hrnet_fast.calibrate_bn(model, size, steps=2, batch=2), size


@pytest.mark.parametrize("task", ["classification", "pose", "segmentation"])
def test_converted_model_exports_with_a_dynamic_batch(tmp_path, task):
    """Exported at batch 1 with ``dynamic_shapes={"x": {0: Dim("batch")}}`` (the README's recipe), the file
    runs in ONNX Runtime at batch 1 and 4 (a plain export fixes the batch to the example's)."""
    model, size = tiny_task_model(task)
    fast = hrnet_fast.convert(model)
    program = torch.onnx.export(fast, (torch.randn(1, 3, *size),), dynamo=True, verbose=False,
                                dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    program.save(str(tmp_path / "dynamic.onnx"))
    session = ort.InferenceSession(str(tmp_path / "dynamic.onnx"), providers=["CPUExecutionProvider"])
    (feed,) = session.get_inputs()
    assert feed.shape == ["batch", 3, *size] and all(o.shape[0] == "batch" for o in session.get_outputs())
    for batch in (1, 4):
        x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
        outs = [torch.from_numpy(o) for o in session.run(None, {feed.name: x.numpy()})]
        assert outs[0].shape[0] == batch
        assert_as_close_as_eager(model, outs, x)


class ConvModule(nn.Module):
    def __init__(self, weight, bias, stride, padding, relu):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding, self.relu = stride, padding, relu

    def forward(self, x, residual=None):
        return ops.conv_bn_act(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                               residual=residual, relu=self.relu)


@pytest.mark.parametrize("kernel,stride,residual,relu,bias", [
    (3, 1, True, True, True), (3, 2, False, True, True), (1, 1, True, False, False), (1, 2, False, False, True)])
def test_conv_bn_act_translation(tmp_path, kernel, stride, residual, relu, bias):
    gen = torch.Generator().manual_seed(kernel * 10 + stride)
    x = torch.randn(2, 18, 13, 17, generator=gen)
    w = torch.randn(36, 18, kernel, kernel, generator=gen) * 0.2
    b = torch.randn(36, generator=gen) if bias else None
    module = ConvModule(w, b, stride, kernel // 2, relu)
    with torch.no_grad():
        y = module(x)
    inputs = [x] + ([torch.randn(y.shape, generator=gen)] if residual else [])
    outs, _ = run_onnx(module, inputs, tmp_path / "conv.onnx")
    expected = ops.conv_bn_act_ref(x, w, b, stride=stride, padding=kernel // 2,
                                   residual=inputs[1] if residual else None, relu=relu)
    torch.testing.assert_close(outs[0], expected, rtol=1e-5, atol=1e-5)


class FuseModule(nn.Module):
    def __init__(self, n_low, relu, **upsample):
        super().__init__()
        self.n_low, self.relu, self.upsample = n_low, relu, upsample

    def forward(self, x, *rest):
        return ops.multires_fuse(x, list(rest[:self.n_low]), list(rest[self.n_low:]), relu=self.relu,
                                 **self.upsample)


@pytest.mark.parametrize("factors,n_same,relu", [((2,), 0, True), ((2, 4, 8), 1, True), ((4,), 2, False),
                                                 ((), 1, False)])
def test_multires_fuse_nearest_translation(tmp_path, factors, n_same, relu):
    """Resize(nearest, asymmetric, floor) reads source pixel floor(dst / f) as F.interpolate does: the ONNX
    graph adds the same numbers in the same order, so it equals the reference exactly."""
    gen = torch.Generator().manual_seed(len(factors) * 3 + n_same)
    x = torch.randn(2, 18, 24, 40, generator=gen)
    low = [torch.randn(2, 18, 24 // f, 40 // f, generator=gen) for f in factors]
    same = [torch.randn(2, 18, 24, 40, generator=gen) for _ in range(n_same)]
    outs, _ = run_onnx(FuseModule(len(low), relu), [x, *low, *same], tmp_path / "fuse.onnx")
    torch.testing.assert_close(outs[0], ops.multires_fuse_ref(x, low, same, relu=relu), rtol=0, atol=0)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("x_size,z_sizes", [((13, 17), [(7, 9)]), ((24, 40), [(12, 20), (3, 5), (24, 40)]),
                                            ((5, 7), [(1, 1)]), ((1, 9), [(1, 4)])])
def test_multires_fuse_bilinear_translation(tmp_path, x_size, z_sizes, align_corners):
    """Resize(linear) with half_pixel (or align_corners) to x's size is F.interpolate's bilinear: against the
    float64 reference, ONNX Runtime's error is at most twice eager fp32's plus the floor (tests/tolerance.py)."""
    gen = torch.Generator().manual_seed(sum(x_size))
    x = torch.randn(2, 8, *x_size, generator=gen)
    low = [torch.randn(2, 8, *size, generator=gen) for size in z_sizes]
    upsample = dict(mode="bilinear", align_corners=align_corners)
    outs, _ = run_onnx(FuseModule(len(low), True, **upsample), [x, *low], tmp_path / "bilinear.onnx")
    assert_matches_reference(outs[0], ops.multires_fuse_ref, x, low, [], relu=True, **upsample)


def test_translation_table_for_custom_translation_table(tmp_path):
    """The public path: the same translations passed explicitly."""
    table = onnx_translation.translation_table()
    assert set(table) == {torch.ops.hrnet_fast.conv_bn_act.default, torch.ops.hrnet_fast.multires_fuse.default}
    x = torch.randn(1, 8, 8, 8)
    z = torch.randn(1, 8, 4, 4)
    outs, _ = run_onnx(FuseModule(1, True), [x, z], tmp_path / "table.onnx", custom_translation_table=table)
    torch.testing.assert_close(outs[0], ops.multires_fuse_ref(x, [z], []), rtol=0, atol=0)


def test_import_does_not_load_onnxscript_and_a_fresh_export_finds_the_translations(tmp_path):
    """``import hrnet_fast`` leaves onnxscript unloaded; the translations are registered when torch's exporter
    loads, so the first plain ``torch.onnx.export`` in a new process finds them."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys, torch, hrnet_fast; assert 'onnxscript' not in sys.modules; "
            "m = torch.nn.Module(); "
            "m.forward = lambda x, z: hrnet_fast.ops.multires_fuse(x, [z]); "
            f"torch.onnx.export(m, (torch.randn(1, 4, 8, 8), torch.randn(1, 4, 2, 2)), {str(tmp_path / 'f.onnx')!r}, "
            "dynamo=True, verbose=False); print('ok')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
