"""The module convert() returns behaves like the model users had: eval state, device and dtype moves, the
wrapped model's attributes, output layout, TorchScript refusal, saving and loading."""
import copy
import os
import subprocess
import sys

import pytest
import torch

import hrnet_fast
from hrnet_fast.convert import FORWARDED_ATTRIBUTES, ConvertedModel
from tolerance import assert_model_matches

SMALL = (64, 64)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def calibrated(name="hrnet_w18_small", **kwargs):
    torch.manual_seed(0)
    return hrnet_fast.calibrate_bn(hrnet_fast.create_model(name, **kwargs), SMALL, steps=2, batch=2)


@pytest.fixture(scope="module")
def model():
    return calibrated()


@pytest.fixture(scope="module")
def features():
    return calibrated(features_only=True)


def image(batch=2, channels_last=False):
    x = torch.randn(batch, 3, *SMALL, generator=torch.Generator().manual_seed(1))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# -- eval state -----------------------------------------------------------------------------------------------

def test_converted_model_is_in_eval_mode(model):
    fast = hrnet_fast.convert(model)
    assert not fast.training and not any(m.training for m in fast.modules())
    fast.eval()  # a no-op, allowed
    assert not fast.training


def test_train_raises_naming_the_reason(model):
    fast = hrnet_fast.convert(model)
    with pytest.raises(RuntimeError, match="inference-only.*convert\\(\\) it again"):
        fast.train()
    assert not fast.training


def test_converting_a_converted_model_returns_it_with_new_options(model):
    fast = hrnet_fast.convert(model)
    x = image()
    again = hrnet_fast.convert(fast)
    assert isinstance(again, ConvertedModel) and again is not fast
    torch.testing.assert_close(again(x), fast(x), rtol=0, atol=0)
    assert hrnet_fast.convert(fast, inplace=True) is fast
    torch_backend = hrnet_fast.convert(fast, backend="torch", keep_channels_last=True)
    backends = {m.requested_backend for m in torch_backend.modules() if hasattr(m, "requested_backend")}
    assert backends == {"torch"} and torch_backend.keep_channels_last
    assert {m.requested_backend for m in fast.modules() if hasattr(m, "requested_backend")} == {None}
    with pytest.raises(TypeError, match=r"already converted for torch.float32.*convert\(model, dtype=torch.bfloat16\)"):
        hrnet_fast.convert(fast, dtype=torch.bfloat16)


def test_a_new_backend_in_place_drops_the_old_backends_prepared_weights(model):
    """After CPU calls have made each conv's kept oneDNN primitives, switching the same model to the torch backend
    runs ATen's convolution: no call may reach the primitives prepared for the cpu backend."""
    from torch.profiler import ProfilerActivity, profile
    fast = hrnet_fast.convert(model)
    x = image()
    want = fast(x)
    fast(x)
    hrnet_fast.convert(fast, backend="torch", inplace=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        got = fast(x)
    ran = {e.key for e in prof.key_averages()}
    assert "hrnet_fast_C::onednn_conv" not in ran and "hrnet_fast_C::replay" not in ran
    assert "aten::convolution" in ran or "aten::mkldnn_convolution" in ran, sorted(ran)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# -- dtype and device moves -------------------------------------------------------------------------------------

@pytest.mark.parametrize("move", ["half", "bfloat16", "double", "to_dtype", "float_of_half"])
def test_dtype_moves_raise_at_once_naming_convert(model, move):
    fast = hrnet_fast.convert(model, dtype=torch.float16 if move == "float_of_half" else torch.float32)
    before = {k: (v.dtype, v.data_ptr()) for k, v in fast.state_dict().items()}
    moves = {"half": lambda m: m.half(), "bfloat16": lambda m: m.bfloat16(), "double": lambda m: m.double(),
             "to_dtype": lambda m: m.to(torch.bfloat16), "float_of_half": lambda m: m.float()}
    with pytest.raises(TypeError, match=r"hrnet_fast\.convert\(model, dtype=torch\.\w+\)"):
        moves[move](fast)
    assert {k: (v.dtype, v.data_ptr()) for k, v in fast.state_dict().items()} == before  # nothing moved
    x = image().to(fast.dtype)
    assert fast(x).dtype == fast.dtype  # still usable


def test_same_dtype_and_device_moves_keep_it_working(model):
    fast = hrnet_fast.convert(model)
    x = image()
    expected = fast(x)
    fast.float().to("cpu").cpu().to(torch.float32)
    torch.testing.assert_close(fast(x), expected, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_moves_between_cpu_and_cuda(model):
    fast = hrnet_fast.convert(model)
    x = image()
    expected = fast(x)
    fast.cuda()
    torch.testing.assert_close(fast(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)
    fast.cpu()
    torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)
    graphs = hrnet_fast.convert(copy.deepcopy(model).cuda(), cuda_graph=True)
    graphs(x.cuda())
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device"):
        graphs.cpu()


# -- attributes of the wrapped model ----------------------------------------------------------------------------

def test_forwarded_attributes_of_our_models(model, features):
    fast = hrnet_fast.convert(model)
    assert fast.num_classes == 1000
    fast_features = hrnet_fast.convert(features)
    assert fast_features.feature_info.channels() == [64, 128, 256, 512, 1024]
    assert fast_features.feature_info.reduction() == [2, 4, 8, 16, 32]
    outs = fast_features(image())
    assert [o.shape[1] for o in outs] == fast_features.feature_info.channels()
    assert [SMALL[0] // o.shape[2] for o in outs] == fast_features.feature_info.reduction()
    with pytest.raises(AttributeError):
        fast.no_such_attribute
    assert "num_classes" in FORWARDED_ATTRIBUTES


def test_forwarded_attributes_of_timm_models():
    timm = pytest.importorskip("timm")
    net = timm.create_model("hrnet_w18_small", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    hrnet_fast.calibrate_bn(net, SMALL, steps=1, batch=2)
    fast = hrnet_fast.convert(net)
    assert fast.feature_info.channels() == net.feature_info.channels() == [128, 256, 512, 1024]
    assert fast.feature_info.reduction() == net.feature_info.reduction()
    assert fast.pretrained_cfg == net.pretrained_cfg and fast.default_cfg == net.default_cfg
    cls = hrnet_fast.convert(timm.create_model("hrnet_w18_small", num_classes=7).eval())
    assert cls.num_classes == 7 and cls.num_features == 2048


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3, 4), (1, 2, 3, 4), (2, 4)])
@pytest.mark.parametrize("location", ["incre", ""])
def test_feature_info_matches_timm(out_indices, location):
    timm = pytest.importorskip("timm")
    ours = hrnet_fast.create_model("hrnet_w18_small", features_only=True, out_indices=out_indices,
                                   feature_location=location)
    theirs = timm.create_model("hrnet_w18_small", features_only=True, out_indices=out_indices,
                               feature_location=location)
    for query in ("channels", "reduction", "module_name"):
        assert getattr(ours.feature_info, query)() == getattr(theirs.feature_info, query)(), query
    assert ours.feature_info.channels(0) == theirs.feature_info.channels(0)
    assert len(ours.feature_info) == len(theirs.feature_info)


# -- output layout ------------------------------------------------------------------------------------------------

def test_contiguous_input_gives_contiguous_outputs(features):
    fast = hrnet_fast.convert(features)
    x = image()
    eager = features(x)
    outs = fast(x)
    for y, e in zip(outs, eager):
        assert y.is_contiguous()
        assert y.view(y.shape[0], -1).shape == e.view(e.shape[0], -1).shape  # view() works as on eager's output


def test_channels_last_input_gives_channels_last_outputs(features):
    fast = hrnet_fast.convert(features)
    outs = fast(image(channels_last=True))
    assert all(o.is_contiguous(memory_format=torch.channels_last) and not o.is_contiguous() for o in outs)


def test_keep_channels_last_option(features):
    fast = hrnet_fast.convert(features, keep_channels_last=True)
    x = image()
    outs = fast(x)
    assert all(not o.is_contiguous() and o.is_contiguous(memory_format=torch.channels_last) for o in outs)
    for y, c in zip(outs, hrnet_fast.convert(features)(x)):
        torch.testing.assert_close(y, c, rtol=0, atol=0)  # same values, only the layout differs


# -- TorchScript, saving, loading -------------------------------------------------------------------------------

class _Called(torch.nn.Module):
    """``model`` called as ``call(model, x)``, as a module of x alone (for the tolerance rule's copies)."""

    def __init__(self, model, call):
        super().__init__()
        self.model, self.call = model, call

    def forward(self, x):
        return self.call(self.model, x)


def heatmap_peaks(y):
    return y.flatten(2).argmax(-1)


class Estimator(torch.nn.Module):
    """A pose network behind an mmpose-style entry point: ``forward(inputs, data_samples, mode="tensor")`` with no
    default for ``data_samples`` (mmpose's ``BasePoseEstimator``)."""

    def __init__(self, net):
        super().__init__()
        self.backbone = net

    def forward(self, inputs, data_samples, mode="tensor"):
        if mode != "tensor":
            raise RuntimeError(f"mode {mode!r} is not taken here")
        return self.backbone(inputs) * (1 if data_samples is None else 2)


def test_further_arguments_reach_the_wrapped_forward():
    """A converted model is called as the model was: its forward's further arguments pass through."""
    estimator = Estimator(calibrated("pose_hrnet_w32")).eval()
    fast = hrnet_fast.convert(copy.deepcopy(estimator))
    x = image(batch=1)
    for call in (lambda m, t: m(t, None), lambda m, t: m(t, None, mode="tensor"), lambda m, t: m(t, data_samples=[])):
        assert_model_matches(_Called(estimator, call), lambda t: call(fast, t), x, decision=heatmap_peaks)
    with pytest.raises(TypeError, match="data_samples"):
        fast(x)  # as the estimator itself would
    with pytest.raises(RuntimeError, match="mode 'loss'"):
        fast(x, None, mode="loss")


def test_torchscript_is_refused_naming_export_and_onnx(model):
    fast = hrnet_fast.convert(model)
    for compile_it in (torch.jit.script, lambda m: torch.jit.trace(m, image())):
        with pytest.raises(RuntimeError, match=r"TorchScript.*torch\.export\.export.*torch\.onnx\.export"):
            compile_it(fast)


def _run_fresh(code: str) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter that has not imported hrnet_fast (the package is on the path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_saved_model_and_exported_program_load_in_a_fresh_process(model, tmp_path):
    """A pickled converted model imports hrnet_fast itself (pickle imports the classes' module). An exported
    program names the ops but cannot import them: torch's load error names the unresolved op and says to import
    it (torch offers no hook to say more), and after ``import hrnet_fast`` it loads and runs."""
    fast = hrnet_fast.convert(model)
    x = image()
    expected = fast(x)
    torch.save(fast, tmp_path / "model.pt")
    torch.save(x, tmp_path / "x.pt")
    torch.save(expected, tmp_path / "expected.pt")
    torch.export.save(torch.export.export(fast, (x,)), tmp_path / "program.pt2")
    check = (f"import torch, sys; x = torch.load({str(tmp_path / 'x.pt')!r}); "
             f"e = torch.load({str(tmp_path / 'expected.pt')!r}); ")
    pickled = _run_fresh(check + f"m = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False); "
                                 f"assert 'hrnet_fast' in sys.modules; torch.testing.assert_close(m(x), e); print('ok')")
    assert pickled.returncode == 0 and "ok" in pickled.stdout, pickled.stderr[-3000:]
    without = _run_fresh(check + f"torch.export.load({str(tmp_path / 'program.pt2')!r})")
    assert without.returncode != 0
    assert "torch.ops.hrnet_fast.conv_bn_act" in without.stderr and "import the custom op" in without.stderr
    with_import = _run_fresh(check + "import hrnet_fast; "
                                     f"p = torch.export.load({str(tmp_path / 'program.pt2')!r}); "
                                     "torch.testing.assert_close(p.module()(x), e); print('ok')")
    assert with_import.returncode == 0 and "ok" in with_import.stdout, with_import.stderr[-3000:]


def test_state_dict_round_trip_between_converted_models(model):
    fast = hrnet_fast.convert(model)
    other = hrnet_fast.convert(calibrated())
    other.load_state_dict(fast.state_dict())
    x = image()
    torch.testing.assert_close(other(x), fast(x), rtol=0, atol=0)


# -- meta device ------------------------------------------------------------------------------------------------

def test_meta_model_is_refused_naming_the_way():
    with torch.device("meta"):
        net = hrnet_fast.create_model("hrnet_w18_small").eval()
    with pytest.raises(ValueError, match=r"meta device.*load_state_dict\(state_dict, assign=True\)"):
        hrnet_fast.convert(net)


def test_meta_model_converts_after_assign_load(model):
    with torch.device("meta"):
        net = hrnet_fast.create_model("hrnet_w18_small").eval()
    net.load_state_dict(model.state_dict(), assign=True)
    x = image()
    torch.testing.assert_close(hrnet_fast.convert(net)(x), hrnet_fast.convert(model)(x), rtol=0, atol=0)
