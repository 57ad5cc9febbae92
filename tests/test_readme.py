"""The README's Python examples, run as written, in order, in a fresh interpreter (blocks after a
``<!-- gpu -->`` marker only where there is a GPU).

``pretrained=True`` goes through timm and the Hugging Face hub cache; this machine reaches no hub, so the test
seeds a hub cache with a weights file it writes itself (random weights in timm's format, where timm would have
downloaded the published ones) and runs offline: the README's own lines and timm's own loading path run
unchanged."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hrnet_fast
from hub_cache import seed_hub_cache

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- gpu -->\n)?```python\n(.*?)```", re.S)


def readme_blocks():
    """[(needs a GPU, code)] for every ```python block of the README, in order."""
    return [(bool(m.group(1)), m.group(2)) for m in BLOCK.finditer((ROOT / "README.md").read_text())]


def test_readme_has_the_examples_it_should():
    blocks = readme_blocks()
    assert len(blocks) >= 4 and any(gpu for gpu, _ in blocks)
    code = "".join(c for _, c in blocks)
    assert "pretrained=True" in code and "torch.onnx.export" in code


def test_readme_python_examples_run(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("onnxscript")
    hub = tmp_path / "hf" / "hub"
    seed_hub_cache(hub, "timm/hrnet_w18.ms_aug_in1k", hrnet_fast.create_model("hrnet_w18").state_dict())
    gpu = torch.cuda.is_available()
    script = "\n".join(code for needs_gpu, code in readme_blocks() if gpu or not needs_gpu)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"README examples failed:\n{result.stderr[-4000:]}"
    assert "1000 ms_aug_in1k" in result.stdout  # the attributes line printed the wrapped model's
    assert (tmp_path / "hrnet_w18_fast.onnx").stat().st_size > 1_000_000  # the exported file, weights inside
