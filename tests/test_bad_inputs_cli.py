"""Bad input to the ``hrnet-fast`` commands. One test per case; each asserts a non-zero exit, exactly one error line
on stderr that names the problem, and no traceback.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
from PIL import Image

from bad_inputs import MODEL, checkpoint, model, run_cli  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """An ImageFolder tree with two classes of one small image each."""
    root = tmp_path_factory.mktemp("images")
    for i, name in enumerate(("cat", "dog")):
        (root / name).mkdir()
        Image.new("RGB", (40, 36), color=(40 * i, 90, 200)).save(root / name / "0.png")
    return root


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
