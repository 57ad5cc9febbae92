"""What the bad-input tests share: the model they test with and its saved checkpoint, as module-scoped
fixtures a test module imports by name (tests/test_bad_inputs_model.py, tests/test_bad_inputs_cli.py), and
``run_cli``, a ``hrnet-fast`` command run in this process (tests/test_bad_inputs_cli.py, tests/test_cli.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import pytest
import torch
import torch.nn as nn

import hrnet_fast
from hrnet_fast.cli import main as cli_main

MODEL = "hrnet_w18_small"
NUM_CLASSES = 10


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return hrnet_fast.create_model(MODEL, num_classes=NUM_CLASSES).eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checkpoint") / f"{MODEL}.pth"
    torch.save(model.state_dict(), path)
    return path


def run_cli(argv: List[str], capsys) -> Tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``hrnet-fast argv`` run in this process; argparse errors exit."""
    try:
        status = cli_main(argv)
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err
