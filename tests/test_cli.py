"""The command line's edges: --version, a bare command, eval's checkpoint errors, info's extension report."""
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

import hrnet_fast
from hrnet_fast.ops import extension


from bad_inputs import run_cli as run  # (exit status, stdout, stderr) of hrnet-fast argv in this process


def test_version(capsys):
    status, out, err = run(["--version"], capsys)
    assert status == 0 and out.strip() == f"hrnet-fast {hrnet_fast.__version__}"


def test_bare_command_prints_usage_and_error_to_stderr_exit_2(capsys):
    status, out, err = run([], capsys)
    assert status == 2 and out == ""
    assert err.startswith("usage: hrnet-fast")
    assert err.rstrip().splitlines()[-1].startswith("hrnet-fast: error: a command is required: bench, profile")


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp("eval")
    for label in ("a", "b"):
        (root / "images" / label).mkdir(parents=True)
        Image.new("RGB", (40, 30), (10, 20, 30)).save(root / "images" / label / "0.png")
    ckpt = root / "ten_classes.pth"
    torch.save(hrnet_fast.create_model("hrnet_w18_small", num_classes=10).state_dict(), ckpt)
    return root / "images", ckpt


def test_eval_checkpoint_error_keeps_lines_and_speaks_cli(eval_data, capsys):
    images, ckpt = eval_data
    status, out, err = run(["eval", "--model", "w18_small", "--checkpoint", str(ckpt), "--data", str(images),
                            "--no-progress", "--workers", "0"], capsys)
    assert status == 2 and "Traceback" not in err
    lines = err.rstrip().splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if "error:" in line):]  # after the folder warning
    assert re.match(r"hrnet-fast eval: error: cannot load .* into hrnet_w18_small \(--num-classes 1000\): "
                    r"the checkpoint \(timm format\) does not fit", lines[0]), lines[0]
    assert any(line.strip().startswith("shape mismatch (2): classifier.weight") for line in lines[1:])
    assert lines[-1].strip() == "The checkpoint has 10 classes: pass --num-classes 10."
    assert "strict=False" not in err and "num_classes" not in err.replace("--num-classes", "")


def test_info_says_which_gpu_code_the_extension_holds(capsys):
    status, out, err = run(["info"], capsys)
    assert status == 0
    line = next(l for l in out.splitlines() if l.startswith("compiled extension:"))
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("hrnet_fast_C::conv_bn_act", "CUDA")
    archs = extension.fatbin_archs(extension.module().__file__)
    assert bool(archs) == has_cuda  # GPU code in the binary exactly when CUDA kernels were registered
    if has_cuda:
        assert "CUDA kernels compiled for " + ", ".join(archs) in line
    else:
        assert "CPU kernels only" in line
    own = hasattr(extension.module(), "onednn_conv_new")
    assert ("primitives kept per layer" in line) == own and ("through ATen's oneDNN op" in line) == (not own)
    assert ("replayed in one call each" in line) == own
    status, out, err = run(["info", "--json"], capsys)
    assert status == 0 and "compiled extension: " + json.loads(out)["compiled_extension"] == line


def test_info_says_when_replay_is_off(capsys, monkeypatch):
    monkeypatch.setenv("HRNET_FAST_NO_REPLAY", "1")
    status, out, err = run(["info"], capsys)
    line = next(l for l in out.splitlines() if l.startswith("compiled extension:"))
    own = hasattr(extension.module(), "onednn_conv_new")
    assert status == 0 and ("each conv called from Python (HRNET_FAST_NO_REPLAY=1)" in line) == own


def _compile(tmp_path: Path, source: str, suffix: str, command) -> Path:
    src = tmp_path / f"k{suffix}"
    src.write_text(source)
    lib = tmp_path / "libk.so"
    result = subprocess.run(command(src, lib), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return lib


def test_fatbin_archs_reads_what_nvcc_wrote(tmp_path):
    """A library built here with known -gencode targets lists exactly those; a plain C library lists none."""
    plain = _compile(tmp_path, "int f(void) { return 1; }\n", ".c",
                     lambda s, o: ["cc", "-shared", "-fPIC", str(s), "-o", str(o)])
    assert extension.fatbin_archs(str(plain)) == []
    home = extension.find_cuda_home()
    if home is None:
        pytest.skip("no CUDA toolkit (nvcc) on this machine to build a test library with")
    nvcc = str(Path(home) / "bin" / "nvcc")
    lib = _compile(tmp_path, "__global__ void k(float* p) { p[0] = 1.f; }\n", ".cu",
                   lambda s, o: [nvcc, "-shared", "-Xcompiler", "-fPIC", "-gencode", "arch=compute_75,code=sm_75",
                                 "-gencode", "arch=compute_86,code=[sm_86,compute_86]", str(s), "-o", str(o)])
    assert extension.fatbin_archs(str(lib)) == ["sm_75", "sm_86", "compute_86"]
