"""Bad input at the model-level entry points: ``create_model``, ``load_checkpoint``, ``convert`` and a converted
model's forward. One test per case; each asserts the exception type and that the message names the problem (the
fused ops: tests/test_bad_inputs_ops.py; the ``hrnet-fast`` commands: tests/test_bad_inputs_cli.py).

Batch 0 is valid everywhere: a converted model returns an empty batch of the right shape.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
import torch
import torch.nn as nn

import hrnet_fast
from bad_inputs import MODEL, NUM_CLASSES, checkpoint, model  # noqa: F401 (fixtures)
from hrnet_fast.checkpoints import CheckpointError, load_checkpoint
from hrnet_fast.ops.backends import availability

INPUT = (1, 3, 32, 32)  # the smallest input HRNet takes


@pytest.fixture(scope="module")
def converted(model) -> nn.Module:
    return hrnet_fast.convert(model)


# ------------------------------------------------------------------------------------------------ create_model
CREATE_MODEL_CASES: Dict[str, Tuple[dict, type, str]] = {
    "unknown name": (dict(name="hrnet_w17"), ValueError,
                     r"unknown model name 'hrnet_w17'; valid names: hrnet_w18_small, "),
    "out_indices past 4": (dict(name=MODEL, features_only=True, out_indices=(0, 5)), ValueError,
                           r"out_indices must be within 0\.\.4, got \[0, 5\]"),
    "negative out_indices": (dict(name=MODEL, features_only=True, out_indices=(-1, 2)), ValueError,
                             r"out_indices must be within 0\.\.4, got \[-1, 2\]"),
    "out_indices not a sequence": (dict(name=MODEL, features_only=True, out_indices=3), TypeError,
                                   r"out_indices must be a sequence of .*got 3"),
    "unknown feature_location": (dict(name=MODEL, features_only=True, feature_location="stem"), ValueError,
                                 r"feature_location must be 'incre' or '', got 'stem'"),
}


@pytest.mark.parametrize("name", CREATE_MODEL_CASES)
def test_create_model_rejects(name):
    kwargs, error, pattern = CREATE_MODEL_CASES[name]
    with pytest.raises(error, match=pattern):
        hrnet_fast.create_model(**kwargs)


# --------------------------------------------------------------------------------------------- load_checkpoint
def write_bytes(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def test_load_checkpoint_truncated_file(model, checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    path = write_bytes(tmp_path, "truncated.pth", data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth is truncated or corrupted"):
        load_checkpoint(model, path)


def test_load_checkpoint_corrupted_tensor_data(model, checkpoint, tmp_path):
    """Flipped bytes inside a tensor's record (a disk or transfer error): the zip entry's CRC no longer matches.
    Loading must refuse the file rather than load wrong weights silently."""
    data = bytearray(checkpoint.read_bytes())
    middle = len(data) // 2  # >99% of the file is tensor data
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path = write_bytes(tmp_path, "corrupted.pth", bytes(data))
    assert zipfile.ZipFile(path).testzip() is not None, "the flipped bytes must land inside a record"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"corrupted\.pth .*corrupt"):
        load_checkpoint(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "a refused load changed weights"


def test_load_checkpoint_not_a_checkpoint(model, tmp_path):
    path = write_bytes(tmp_path, "noise.pth", bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match=r"noise\.pth is neither a PyTorch checkpoint nor a PaddlePaddle"):
        load_checkpoint(model, path)


def test_load_checkpoint_empty_file(model, tmp_path):
    path = write_bytes(tmp_path, "empty.pth", b"")
    with pytest.raises(CheckpointError, match=r"checkpoint file is empty: .*empty\.pth"):
        load_checkpoint(model, path)


def test_load_checkpoint_missing_path(model, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint file not found: .*nowhere\.pth"):
        load_checkpoint(model, tmp_path / "nowhere.pth")


def test_load_checkpoint_directory(model, tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint path is not a file"):
        load_checkpoint(model, tmp_path)


def test_load_checkpoint_with_python_objects(model, tmp_path):
    """A pickle that would build arbitrary objects is refused (weights_only), with the way out named."""
    path = tmp_path / "objects.pth"
    torch.save({"state_dict": model.state_dict(), "optimizer": zipfile.ZipInfo("x")}, path)
    with pytest.raises(CheckpointError, match=r"holds Python objects besides tensors.*weights_only=False"):
        load_checkpoint(model, path)


def test_load_checkpoint_of_another_variant(model, tmp_path):
    other = hrnet_fast.create_model("hrnet_w18_small_v2", num_classes=NUM_CLASSES)
    path = tmp_path / "v2.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"looks like a checkpoint of hrnet_w18_small_v2"):
        load_checkpoint(model, path)


def test_load_checkpoint_missing_keys(model):
    state = dict(model.state_dict())
    del state["stage4.0.branches.0.0.conv1.weight"]
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint \(1\): "
                                              r"stage4\.0\.branches\.0\.0\.conv1\.weight"):
        load_checkpoint(model, state)


def test_load_checkpoint_unexpected_keys(model):
    state = dict(model.state_dict(), **{"extra_head.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected in the checkpoint \(1\): extra_head\.weight"):
        load_checkpoint(model, state)


def test_load_checkpoint_other_num_classes(model):
    state = hrnet_fast.create_model(MODEL, num_classes=NUM_CLASSES + 1).state_dict()
    with pytest.raises(CheckpointError, match=r"shape mismatch \(2\): classifier\.weight, classifier\.bias"
                                              r"(.|\n)*classifier size differs"):
        load_checkpoint(model, state)


def test_load_checkpoint_non_tensor_entry(model):
    with pytest.raises(CheckpointError, match=r"checkpoint entry 'conv1\.weight' is a str, not a tensor"):
        load_checkpoint(model, {"conv1.weight": "weights.npy"})


def test_load_checkpoint_not_a_module(checkpoint):
    with pytest.raises(TypeError, match=r"load_checkpoint expects an nn\.Module, got OrderedDict"):
        load_checkpoint(torch.load(checkpoint, weights_only=True), checkpoint)


# ------------------------------------------------------------------------------------------------------ convert
CONVERT_CASES: Dict[str, Tuple[Callable[[nn.Module], object], type, str]] = {
    "training mode": (lambda m: hrnet_fast.convert(hrnet_fast.create_model(MODEL, num_classes=NUM_CLASSES)),
                      RuntimeError, r"must be in eval mode: call model\.eval\(\) first"),
    "not a module": (lambda m: hrnet_fast.convert(m.state_dict()), TypeError,
                     r"convert\(\) takes an nn\.Module, got OrderedDict"),
    "float64": (lambda m: hrnet_fast.convert(m, dtype=torch.float64), TypeError,
                r"dtype must be torch\.float32, torch\.float16 or torch\.bfloat16, got torch\.float64"),
    "integer dtype": (lambda m: hrnet_fast.convert(m, dtype=torch.int8), TypeError,
                      r"dtype must be .* got torch\.int8"),
    "dtype given as a string": (lambda m: hrnet_fast.convert(m, dtype="float16"), TypeError,
                                r"dtype must be .* got float16"),
    "unknown backend": (lambda m: hrnet_fast.convert(m, backend="opencl"), ValueError,
                        r"unknown backend 'opencl'; choose one of torch, triton, cuda, cpu"),
    "backend not live for the model's device": (lambda m: hrnet_fast.convert(m, backend="cuda"), RuntimeError,
                                                r"backend 'cuda' cannot run conv_bn_act on cpu"),
    "cuda_graph on a CPU model": (lambda m: hrnet_fast.convert(m, cuda_graph=True), ValueError,
                                  r"cuda_graph=True needs a model on a CUDA device; this one is on cpu"),
    "no parameters": (lambda m: hrnet_fast.convert(nn.Sequential(nn.ReLU()).eval()), ValueError,
                      r"has no parameters"),
    "parameters on several devices": (lambda m: hrnet_fast.convert(nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, device="meta")).eval()), ValueError, r"several devices"),
}


@pytest.mark.parametrize("name", CONVERT_CASES)
def test_convert_rejects(model, name):
    call, error, pattern = CONVERT_CASES[name]
    with pytest.raises(error, match=pattern):
        call(model)


# --------------------------------------------------------------------------------------- converted model forward
FORWARD_CASES: Dict[str, Tuple[Callable[[], object], type, str]] = {
    "wrong channels": (lambda: torch.randn(1, 1, 32, 32), ValueError,
                       r"the model takes 3 input channels, got 1 \(input shape \(1, 1, 32, 32\)\)"),
    "float16 into an fp32 model": (lambda: torch.randn(INPUT).half(), TypeError,
                                   r"converted for torch\.float32 inputs, got torch\.float16"),
    "uint8 image": (lambda: torch.zeros(INPUT, dtype=torch.uint8), TypeError,
                    r"converted for torch\.float32 inputs, got torch\.uint8"),
    "int64": (lambda: torch.zeros(INPUT, dtype=torch.int64), TypeError,
              r"converted for torch\.float32 inputs, got torch\.int64"),
    "float64": (lambda: torch.randn(INPUT, dtype=torch.float64), TypeError,
                r"converted for torch\.float32 inputs, got torch\.float64"),
    "another device": (lambda: torch.randn(INPUT, device="meta"), ValueError,
                       r"the model is on cpu but the input is on meta"),
    "size the branches cannot align": (lambda: torch.randn(1, 3, 24, 40), ValueError,
                                       r"HRNet cannot take a 24x40 input"),
    "empty spatial size": (lambda: torch.randn(1, 3, 0, 32), ValueError, r"HRNet cannot take a 0x32 input"),
    "not 4-D": (lambda: torch.randn(3, 32, 32), ValueError, r"expected a 4-D \(N, C, H, W\) image batch, got shape"),
    "not a tensor": (lambda: [[0.0] * 32] * 32, TypeError, r"expected a torch\.Tensor, got list"),
}
UNSUPPORTED_DTYPES = ("uint8", "int64", "float64")  # convert() refuses these as a run dtype


@pytest.mark.parametrize("name", FORWARD_CASES)
def test_converted_forward_rejects(converted, name):
    make_input, error, pattern = FORWARD_CASES[name]
    with pytest.raises(error, match=pattern) as info:
        converted(make_input())
    if name.split()[0] in UNSUPPORTED_DTYPES:
        # The remedy offered must be one convert() accepts: casting the input, not converting for this dtype.
        assert "convert with dtype" not in str(info.value), str(info.value)


CPU_BACKENDS = ("torch", "cpu", "triton")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_converted_forward_batch_zero(model, backend):
    """An empty batch is a valid input: the result is an empty batch of logits, like the reference's."""
    live, why = availability(backend, "conv_bn_act", "cpu")
    if not live:
        pytest.skip(f"backend {backend!r} is not live on cpu: {why}")
    empty = torch.randn(0, 3, 64, 64)
    y = hrnet_fast.convert(model, backend=backend)(empty)
    assert y.shape == (0, NUM_CLASSES) and y.dtype == torch.float32
    assert model(empty).shape == y.shape


@pytest.mark.parametrize("feature_location", ("incre", ""), ids=("incre", "raw"))
def test_converted_features_batch_zero(feature_location):
    net = hrnet_fast.create_model(MODEL, features_only=True, feature_location=feature_location).eval()
    empty = torch.randn(0, 3, 64, 96)
    features = hrnet_fast.convert(net)(empty)
    expected = [tuple(f.shape) for f in net(empty)]
    assert [tuple(f.shape) for f in features] == expected
    assert [s[1] for s in expected] == net.feature_channels and all(s[0] == 0 for s in expected)
