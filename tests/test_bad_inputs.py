"""Bad input at every public entry point: ``create_model``, ``load_checkpoint``, ``convert``, a converted model's
forward, both fused ops and the ``hrnet-fast`` commands. One test per case; each asserts the exception type (for
the CLI: a non-zero exit, one error line on stderr, no traceback) and that the message names the problem.

Batch 0 is valid everywhere: a converted model returns an empty batch of the right shape.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch
import torch.nn as nn
from PIL import Image

import hrnet_fast
import hrnet_fast.ops as ops
from hrnet_fast.checkpoints import CheckpointError, load_checkpoint
from hrnet_fast.cli import main as cli_main
from hrnet_fast.ops.backends import availability

MODEL = "hrnet_w18_small"
NUM_CLASSES = 10
INPUT = (1, 3, 32, 32)  # the smallest input HRNet takes


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return hrnet_fast.create_model(MODEL, num_classes=NUM_CLASSES).eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checkpoint") / f"{MODEL}.pth"
    torch.save(model.state_dict(), path)
    return path


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


# ----------------------------------------------------------------------------------------------------- the ops
def _t(*shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, device=device)


# name: (x, weight, bias, residual, stride, padding, backend), error, pattern
CONV_CASES = {
    "integer dtype": (lambda: (_t(1, 8, 6, 6, dtype=torch.int32), _t(4, 8, 3, 3, dtype=torch.int32), None, None,
                               1, 1, None), TypeError, r"x has dtype torch\.int32; supported dtypes are"),
    "float64": (lambda: (_t(1, 8, 6, 6, dtype=torch.float64), _t(4, 8, 3, 3, dtype=torch.float64), None, None,
                         1, 1, None), TypeError, r"x has dtype torch\.float64; supported dtypes are"),
    "weight on another device": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3, device="meta"), None, None, 1, 1, None),
                                 ValueError, r"weight is on meta but x is on cpu; all inputs must be on one device"),
    "bias on another device": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3), _t(4, device="meta"), None, 1, 1, None),
                               ValueError, r"bias is on meta but x is on cpu"),
    "residual on another device": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3), None, _t(1, 4, 6, 6, device="meta"),
                                            1, 1, None), ValueError, r"residual is on meta but x is on cpu"),
    "empty spatial size": (lambda: (_t(1, 8, 0, 6), _t(4, 8, 3, 3), None, None, 1, 1, None), ValueError,
                           r"input of spatial size \(0, 6\) is too small for a 3x3 kernel"),
    "mismatched channels": (lambda: (_t(1, 8, 6, 6), _t(4, 9, 3, 3), None, None, 1, 1, None), ValueError,
                            r"x has 8 channels but weight expects 9"),
    "mismatched residual": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3), None, _t(1, 4, 6, 6), 2, 1, None), ValueError,
                            r"residual has shape \(1, 4, 6, 6\) but the conv output is \(1, 4, 3, 3\)"),
    "bias of another length": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3), _t(8), None, 1, 1, None), ValueError,
                               r"bias must have shape \(4,\), got \(8,\)"),
    "x not a tensor": (lambda: ([[0.0]], _t(4, 8, 3, 3), None, None, 1, 1, None), TypeError,
                       r"x must be a torch\.Tensor, got list"),
    "unknown backend": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3), None, None, 1, 1, "opencl"), ValueError,
                        r"unknown backend 'opencl'"),
    "backend for another device": (lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3), None, None, 1, 1, "cuda"),
                                   RuntimeError, r"backend 'cuda' cannot run conv_bn_act on cpu"),
    "x requires grad": (lambda: (_t(1, 8, 6, 6).requires_grad_(), _t(4, 8, 3, 3), None, None, 1, 1, None),
                        RuntimeError, r"conv_bn_act is inference-only and has no backward, but an input requires"),
    "weight requires grad, torch backend": (
        lambda: (_t(1, 8, 6, 6), _t(4, 8, 3, 3).requires_grad_(), None, None, 1, 1, "torch"), RuntimeError,
        r"conv_bn_act is inference-only .* torch\.no_grad\(\) or torch\.inference_mode\(\)"),
}


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_bn_act_rejects(name):
    make, error, pattern = CONV_CASES[name]
    x, weight, bias, residual, stride, padding, backend = make()
    with pytest.raises(error, match=pattern):
        ops.conv_bn_act(x, weight, bias, stride=stride, padding=padding, residual=residual, backend=backend)


# name: (x, low_res, same_res, backend), error, pattern
FUSE_CASES = {
    "integer dtype": (lambda: (_t(1, 4, 8, 8, dtype=torch.int32), [], [], None), TypeError,
                      r"x has dtype torch\.int32; supported dtypes are"),
    "integer same_res": (lambda: (_t(1, 4, 8, 8), [], [_t(1, 4, 8, 8, dtype=torch.uint8)], None), TypeError,
                         r"same_res\[0\] has dtype torch\.uint8; supported dtypes are"),
    "float64": (lambda: (_t(1, 4, 8, 8, dtype=torch.float64), [_t(1, 4, 4, 4, dtype=torch.float64)], [], None),
                TypeError, r"x has dtype torch\.float64; supported dtypes are"),
    "low_res on another device": (lambda: (_t(1, 4, 8, 8), [_t(1, 4, 4, 4, device="meta")], [], None), ValueError,
                                  r"low_res\[0\] is on meta but x is on cpu; all inputs must be on one device"),
    "same_res on another device": (lambda: (_t(1, 4, 8, 8), [], [_t(1, 4, 8, 8, device="meta")], None),
                                   ValueError, r"same_res\[0\] is on meta but x is on cpu"),
    "empty spatial size": (lambda: (_t(1, 4, 8, 0), [], [], None), ValueError,
                           r"x has an empty spatial size \(8, 0\)"),
    "empty low_res": (lambda: (_t(1, 4, 8, 8), [_t(1, 4, 0, 4)], [], None), ValueError,
                      r"low_res\[0\] is 0x4 and x is 8x8: low_res inputs must be smaller than x by one power-of-two"),
    "mismatched same_res": (lambda: (_t(1, 4, 8, 8), [], [_t(1, 4, 8, 9)], None), ValueError,
                            r"same_res\[0\] has shape \(1, 4, 8, 9\) but x has \(1, 4, 8, 8\)"),
    "mismatched low_res channels": (lambda: (_t(1, 4, 8, 8), [_t(1, 5, 4, 4)], [], None), ValueError,
                                    r"low_res\[0\] has shape \(1, 5, 4, 4\); batch and channels must match x"),
    "low_res factor not a power of two": (lambda: (_t(1, 4, 12, 12), [_t(1, 4, 4, 4)], [], None), ValueError,
                                          r"low_res\[0\] is 4x4 and x is 12x12: .*power-of-two factor"),
    "low_res not a tensor": (lambda: (_t(1, 4, 8, 8), [3.0], [], None), TypeError,
                             r"low_res\[0\] must be a torch\.Tensor, got float"),
    "unknown backend": (lambda: (_t(1, 4, 8, 8), [], [], "opencl"), ValueError, r"unknown backend 'opencl'"),
    "backend for another device": (lambda: (_t(1, 4, 8, 8), [], [], "cuda"), RuntimeError,
                                   r"backend 'cuda' cannot run multires_fuse on cpu"),
    "low_res requires grad": (lambda: (_t(1, 4, 8, 8), [_t(1, 4, 4, 4).requires_grad_()], [], None), RuntimeError,
                              r"multires_fuse is inference-only and has no backward, but an input requires grad"),
    "x requires grad, torch backend": (lambda: (_t(1, 4, 8, 8).requires_grad_(), [], [], "torch"), RuntimeError,
                                       r"multires_fuse is inference-only and has no backward"),
}


@pytest.mark.parametrize("name", FUSE_CASES)
def test_multires_fuse_rejects(name):
    make, error, pattern = FUSE_CASES[name]
    x, low, same, backend = make()
    with pytest.raises(error, match=pattern):
        ops.multires_fuse(x, low, same, backend=backend)


# --------------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """An ImageFolder tree with two classes of one small image each."""
    root = tmp_path_factory.mktemp("images")
    for i, name in enumerate(("cat", "dog")):
        (root / name).mkdir()
        Image.new("RGB", (40, 36), color=(40 * i, 90, 200)).save(root / name / "0.png")
    return root


def run_cli(argv: List[str], capsys) -> Tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``hrnet-fast argv`` run in this process; argparse errors exit."""
    try:
        status = cli_main(argv)
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, out: str, err: str, pattern: str) -> None:
    """A non-zero exit; on stderr exactly one error line, the last line printed, naming the problem; no
    traceback anywhere."""
    assert status not in (0, None), f"exit status {status}"
    assert "Traceback" not in out + err, out + err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, f"expected one error line on stderr, got:\nstdout: {out}\nstderr: {err}"
    assert err.rstrip().splitlines()[-1] == errors[0], "the error must be the last line"
    assert re.search(pattern, errors[0]), f"{errors[0]!r} does not match {pattern!r}"


CLI_CASES: Dict[str, Tuple[List[str], str]] = {
    "unknown command": (["frobnicate"], r"invalid choice: 'frobnicate'"),
    "info: unknown option": (["info", "--bogus"], r"unrecognized arguments: --bogus"),
    "bench: unknown model": (["bench", "--models", "hrnet_w99"], r"unknown model name 'hrnet_w99'; valid names"),
    "bench: batch 0": (["bench", "--batch", "0"], r"bad batch list '0': give positive integers"),
    "bench: batch not a number": (["bench", "--batch", "four"], r"bad batch list 'four'"),
    "bench: unknown dtype": (["bench", "--dtype", "fp8"], r"unknown precision 'fp8': choose from fp32, fp16, bf16"),
    "bench: input size HRNet cannot take": (["bench", "--input-size", "24"], r"HRNet cannot take a 24x24 input"),
    "bench: negative warmup": (["bench", "--warmup", "-1"], r"--warmup must be >= 0, got -1"),
    "bench: zero threads": (["bench", "--threads", "0"], r"--threads must be >= 1, got 0"),
    "bench: unknown device": (["bench", "--device", "tpu"], r"--device must be cpu or cuda\[:N\], got 'tpu'"),
    "bench: unknown peer": (["bench", "--peers", "tensorrt"], r"unknown peer 'tensorrt'"),
    "profile: unknown model": (["profile", "--models", "hrnet_w99"], r"unknown model name 'hrnet_w99'"),
    "profile: bad input size": (["profile", "--input-size", "0x5"], r"input size must be N or HxW with positive"),
    "profile: input size HRNet cannot take": (["profile", "--input-size", "24"], r"HRNet cannot take a 24x24 input"),
}


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_rejects(name, capsys):
    argv, pattern = CLI_CASES[name]
    assert_one_line_error(*run_cli(argv, capsys), pattern)


def eval_argv(data: Path, checkpoint: Path, *extra: str, model: str = MODEL) -> List[str]:
    return ["eval", "--model", model, "--checkpoint", str(checkpoint), "--data", str(data), "--no-progress",
            "--workers", "0", *extra]


EVAL_CASES: Dict[str, Tuple[Callable[[Path, Path, Path], List[str]], str]] = {
    "missing data folder": (lambda images, ckpt, tmp: eval_argv(tmp / "missing", ckpt),
                            r"data folder not found: .*missing"),
    "data folder without classes": (lambda images, ckpt, tmp: eval_argv(tmp, ckpt),
                                    r"has no class sub-folders"),
    "unknown model": (lambda images, ckpt, tmp: eval_argv(images, ckpt, model="hrnet_w99"),
                      r"unknown model name 'hrnet_w99'"),
    "missing checkpoint": (lambda images, ckpt, tmp: eval_argv(images, tmp / "nowhere.pth"),
                           r"checkpoint not found: .*nowhere\.pth"),
    "batch size 0": (lambda images, ckpt, tmp: eval_argv(images, ckpt, "--batch-size", "0"),
                     r"--batch-size and --num-classes must be positive"),
    "crop HRNet cannot take": (lambda images, ckpt, tmp: eval_argv(images, ckpt, "--crop", "100"),
                               r"HRNet cannot take a 100x100 input"),
    "crop larger than resize": (lambda images, ckpt, tmp: eval_argv(images, ckpt, "--crop", "288"),
                                r"crop \(288\) must not exceed resize \(256\)"),
    "unknown dtype": (lambda images, ckpt, tmp: eval_argv(images, ckpt, "--dtype", "fp8"),
                      r"argument --dtype: invalid choice: 'fp8'"),
    "unknown device": (lambda images, ckpt, tmp: eval_argv(images, ckpt, "--device", "gpu0"), r"--device 'gpu0'"),
    "more classes in the folder than the model has": (
        lambda images, ckpt, tmp: eval_argv(images, ckpt, "--num-classes", "1"),
        r"has 2 class folders, but the model has 1 classes"),
}


@pytest.mark.parametrize("name", EVAL_CASES)
def test_cli_eval_rejects(name, image_folder, checkpoint, tmp_path, capsys):
    """One line naming the problem (a checkpoint that does not fit gets several: tests/test_cli.py)."""
    make_argv, pattern = EVAL_CASES[name]
    assert_one_line_error(*run_cli(make_argv(image_folder, checkpoint, tmp_path), capsys), pattern)


def test_cli_error_from_a_real_process(tmp_path):
    """The installed entry point (``python -m hrnet_fast``) exits 2 with one line on stderr, no traceback."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "hrnet_fast", *eval_argv(tmp_path / "missing", tmp_path / "x")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert_one_line_error(result.returncode, result.stdout, result.stderr, r"data folder not found")
