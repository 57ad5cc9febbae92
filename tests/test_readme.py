"""The README's Python examples, run as written, in order, in a fresh interpreter (blocks after a
``<!-- gpu -->`` marker only where there is a GPU); the examples of the docs pages that hold the deep dives, each
page on its own in a fresh interpreter the same way; and the README's key figures against the JSON they cite.

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


def readme_blocks(page="README.md"):
    """[(needs a GPU, code)] for every ```python block of the README (or of another page), in order."""
    return [(bool(m.group(1)), m.group(2)) for m in BLOCK.finditer((ROOT / page).read_text())]


# Docs pages whose examples are run as written, with what each must show (examples moved there from the README).
DOC_EXAMPLES = {
    "docs/models.md": ['create_model("pose_hrnet_w32")', 'create_model("seg_hrnetv2_w48")', "align_corners=False"],
    "docs/convert.md": ["hrnet_fast.warmup(fast, "],
    "docs/ops.md": ["ops.fold_bn(", "ops.conv_bn_act(", "ops.multires_fuse(", 'mode="bilinear"'],
    "docs/cpu-internals.md": ["cpu_features.native_dtypes()", "dtype=torch.bfloat16"],
}


def test_readme_has_the_examples_it_should():
    blocks = readme_blocks()
    assert len(blocks) >= 4 and any(gpu for gpu, _ in blocks)
    code = "".join(c for _, c in blocks)
    assert "pretrained=True" in code and "torch.onnx.export" in code


def run_blocks(page, tmp_path):
    """Runs ``page``'s ```python blocks as one script in a fresh interpreter, offline, with a seeded hub cache."""
    hub = tmp_path / "hf" / "hub"
    seed_hub_cache(hub, "timm/hrnet_w18.ms_aug_in1k", hrnet_fast.create_model("hrnet_w18").state_dict())
    gpu = torch.cuda.is_available()
    script = "\n".join(code for needs_gpu, code in readme_blocks(page) if gpu or not needs_gpu)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"{page} examples failed:\n{result.stderr[-4000:]}"
    return result


def test_readme_python_examples_run(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("onnxscript")
    result = run_blocks("README.md", tmp_path)
    assert "1000 ms_aug_in1k" in result.stdout  # the attributes line printed the wrapped model's
    assert (tmp_path / "hrnet_w18_fast.onnx").stat().st_size > 1_000_000  # the exported file, weights inside


@pytest.mark.parametrize("page", sorted(DOC_EXAMPLES))
def test_docs_python_examples_run(page, tmp_path):
    """Each page's examples, as written, on their own: a page's first block sets up what its others use."""
    blocks = readme_blocks(page)
    code = "".join(c for _, c in blocks)
    assert blocks and all(s in code for s in DOC_EXAMPLES[page]), f"{page} lacks the examples it should hold"
    run_blocks(page, tmp_path)


FIGURES = re.compile(r"\*{0,2}(\d+\.\d+)x\*{0,2} \((\d[\d,]*\.\d) -> (\d[\d,]*\.\d) ms\)")


def medians(data):
    """Every ``median_ms`` in a bench JSON."""
    if isinstance(data, dict):
        return [v for k, v in data.items() if k == "median_ms"] + [m for v in data.values() for m in medians(v)]
    if isinstance(data, list):
        return [m for v in data for m in medians(v)]
    return []


def test_readme_key_figures_match_their_json():
    """Each row of the README's key figures names the JSON it comes from, which exists; each "N.NNx (A -> B ms)" is
    two medians of that file, to the digit shown, and N.NN their ratio."""
    import json
    text = (ROOT / "README.md").read_text()
    table = text.split("## Key figures", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("|") and ".json`" in r]
    assert len(rows) >= 5 and "never run on a GPU" in table
    checked = 0
    for row in rows:
        name = re.search(r"`([\w.-]+\.json)`", row).group(1)
        path = ROOT / "benchmarks" / "results" / name
        assert path.exists(), f"the README cites {name}, which benchmarks/results/ lacks"
        found = medians(json.loads(path.read_text()))
        for ratio, a, b in FIGURES.findall(row):
            a, b = float(a.replace(",", "")), float(b.replace(",", ""))
            exact = {round(m, 1): m for m in found}
            assert a in exact and b in exact, f"{a} / {b} ms are not medians in {name}"
            assert float(ratio) == round(exact[a] / exact[b], 2), f"{ratio}x is not {a} / {b} in {name}"
            checked += 1
    assert checked >= 6


def test_readme_pipeline_figures_match_their_json():
    """The key figures' segmentation-pipeline rows: the end-to-end speed-up, the memory after the network and the
    pixels that differ (all ties), as the seg_pipeline.py JSON they cite recorded them."""
    import json
    table = (ROOT / "README.md").read_text().split("## Key figures", 1)[1].split("\n## ", 1)[0]

    def row_and_run(name):
        row = next(r for r in table.splitlines() if f"`{name}`" in r)
        return row, json.loads((ROOT / "benchmarks" / "results" / name).read_text())["results"][0]["fp32"]

    row, run = row_and_run("cpu-epyc-2threads-seg-pipeline-w18-512x1024.json")
    assert f"**{run['end_to_end_ms']['speedup']:.2f}x**" in row
    row, run = row_and_run("cpu-epyc-2threads-seg-pipeline-w48-1024x2048-fp32.json")
    post, agreement = run["post_network"], run["agreement"]
    assert (f"{post['fused']['peak_bytes'] / 1e6:.2f} MB instead of {post['reference']['peak_bytes'] / 1e6:.1f} MB"
            in row)
    assert f"**1/{round(1 / post['peak_ratio'])}**" in row
    assert f"differ at {agreement['differ']} of {agreement['pixels'] / 1e6:.1f} M pixels, all ties" in row
    assert agreement["all_ties"]
