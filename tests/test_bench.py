"""``hrnet-fast bench`` end to end on a tiny setting, its option errors, and the timing utilities."""
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

import hrnet_fast
from hrnet_fast import bench, cli
from hrnet_fast import timing
from hrnet_fast.timing import TimingStats, time_round_robin

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--models", "w18_small", "--input-size", "64", "--batch", "1,2", "--reps", "3", "--warmup", "1",
             "--peers", "channels_last,onnxruntime,openvino", "--device", "cpu", "--dtype", "fp32"]
IMPLS = ["reference", "converted", "channels_last", "onnxruntime", "openvino_fp32", "openvino_default"]
NUMBER = r"\d+\.\d+"
MARKED = r"( \(!\))?"  # a cell this busy machine disturbed is marked (tests/test_bench_disturbance.py)


def markdown_tables(text: str) -> Dict[str, List[List[str]]]:
    """``### title`` -> the rows (header first, separator dropped) of the table that follows it."""
    tables: Dict[str, List[List[str]]] = {}
    title = None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:].strip()
            tables[title] = []
        elif line.startswith("|") and title is not None and not line.startswith("|:"):
            tables[title].append([cell.strip() for cell in line.strip("|").split("|")])
    return tables


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real run of the command: stdout, the JSON it wrote, and the plot's path."""
    out = tmp_path_factory.mktemp("bench")
    json_path, png_path = out / "run.json", out / "plot.png"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "hrnet_fast", "bench", *TINY_ARGS, "--json", str(json_path),
                           "--plot", str(png_path)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(json_path.read_text()), png_path


def test_latency_tables_have_the_seed_layout(tiny_run):
    stdout, _, _ = tiny_run
    tables = markdown_tables(stdout)
    for impl in IMPLS:
        title = f"FP32, {bench.LABELS[impl]}"
        assert tables[title][0] == ["Models", "batch_size=1 (ms)", "batch_size=2 (ms)"]
        assert len(tables[title]) == 2
        row = tables[title][1]
        assert row[0] == "hrnet_w18_small"
        assert all(re.fullmatch(NUMBER + MARKED, cell) and float(cell.split()[0]) > 0 for cell in row[1:])


def test_speedup_table_is_reference_over_each_implementation(tiny_run):
    stdout, data, _ = tiny_run
    table = next(rows for title, rows in markdown_tables(stdout).items() if title.startswith("Speed-up"))
    assert table[0] == ["Models", "Precision", "Implementation", "batch_size=1", "batch_size=2"]
    medians = {(r["implementation"], r["batch"]): r["median_ms"] for r in data["results"]}
    assert [row[2] for row in table[1:]] == IMPLS[1:]
    for row in table[1:]:
        for batch, cell in zip((1, 2), row[3:]):
            expected = medians[("reference", batch)] / medians[(row[2], batch)]
            assert re.fullmatch(re.escape(f"{expected:.2f}x") + MARKED, cell)


def test_dispatch_table_shows_conversion_removes_ops_and_bytes(tiny_run):
    stdout, data, _ = tiny_run
    table = next(rows for title, rows in markdown_tables(stdout).items() if title.startswith("Per forward"))
    header, row = table
    assert header[:4] == ["Models", "Precision", "Ops (reference)", "Ops (converted)"]
    ref_ops, conv_ops = int(row[2]), int(row[3])
    counts = data["models"]["hrnet_w18_small"]["dispatch_per_forward"]["fp32"]
    assert (counts["reference"]["ops"], counts["converted"]["ops"]) == (ref_ops, conv_ops)
    # Folding BN and fusing epilogues must leave fewer launches and less activation traffic.
    assert conv_ops < ref_ops
    assert counts["converted"]["bytes_written"] < counts["reference"]["bytes_written"]


def test_params_table_matches_the_model(tiny_run):
    stdout, data, _ = tiny_run
    table = next(rows for title, rows in markdown_tables(stdout).items() if title.startswith("Params and FLOPs"))
    params = sum(p.numel() for p in hrnet_fast.create_model("hrnet_w18_small").parameters())
    assert table[1][0] == "hrnet_w18_small"
    assert table[1][1] == f"{params / 1e6:.2f}"
    assert data["models"]["hrnet_w18_small"]["params"] == params
    assert data["models"]["hrnet_w18_small"]["flops"] > data["models"]["hrnet_w18_small"]["macs"] > 0


def test_json_records_every_timing_with_its_spread(tiny_run):
    _, data, _ = tiny_run
    records = data["results"]
    assert sorted((r["implementation"], r["batch"]) for r in records) == sorted(
        (impl, b) for impl in IMPLS for b in (1, 2))
    for r in records:
        assert r["model"] == "hrnet_w18_small" and r["dtype"] == "fp32"
        assert r["reps"] == 3
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["speedup_vs_reference"] == pytest.approx(
            next(x["median_ms"] for x in records if x["implementation"] == "reference" and x["batch"] == r["batch"])
            / r["median_ms"])


def test_marked_cells_are_the_ones_the_json_calls_disturbed(tiny_run):
    stdout, data, _ = tiny_run
    tables = markdown_tables(stdout)
    for r in data["results"]:
        cell = tables[f"FP32, {bench.LABELS[r['implementation']]}"][1][r["batch"]]  # batches 1, 2: columns 1, 2
        assert cell.endswith("(!)") == bool(r["disturbed"]), (cell, r)
    assert data["disturbance"]["cells"] == sum(bool(r["disturbed"]) for r in data["results"])
    assert (data["disturbance"]["rerun"] is None) == (not data["disturbance"]["cells"]
                                                      and data["disturbance"]["load_at_start"] is None)


def test_json_records_environment_and_command_line(tiny_run):
    _, data, _ = tiny_run
    env = data["environment"]
    assert env["torch"] == torch.__version__
    assert env["device"] == "cpu"
    assert env["device_name"] == env["cpu_model"] and env["cpu_model"]
    assert env["torch_threads"] == torch.get_num_threads()
    for key in ("triton", "cuda", "onnxruntime", "cpu_count", "python", "backends_live"):
        assert key in env
    assert "bench" in data["command"] and "--models w18_small" in data["command"]
    assert data["equivalent_command"].startswith("hrnet-fast bench --models hrnet_w18_small --batch 1,2 --dtype fp32")
    assert data["settings"]["implementations"] == IMPLS
    assert data["settings"]["input_size"] == [64, 64]


def test_converted_outputs_agree_with_the_reference(tiny_run):
    _, data, _ = tiny_run
    errors = data["models"]["hrnet_w18_small"]["rel_error_vs_fp32_reference"]["fp32"]
    assert set(errors) == set(IMPLS[1:])  # the FP32 reference is the truth itself
    # The bench must time a model that gives the reference's answers: fp32 to rounding (DESIGN.md floor).
    assert errors["converted"] < 1e-5


def test_openvino_runs_at_fp32_and_at_its_default_precision(tiny_run):
    stdout, data, _ = tiny_run
    info = data["models"]["hrnet_w18_small"]["implementation_info"]["fp32"]
    # fp32 is forced; the default is whatever OpenVINO chose on this CPU (bf16 with AMX or AVX512-BF16, else f32).
    assert info["openvino_fp32"] == {"inference_precision": "f32"}
    default = info["openvino_default"]["inference_precision"]
    assert default in ("f32", "bf16", "f16")
    assert f"hrnet_w18_small: inference precision {default} (as its runtime reports it)" in stdout
    errors = data["models"]["hrnet_w18_small"]["rel_error_vs_fp32_reference"]["fp32"]
    assert errors["openvino_fp32"] < 1e-4  # fp32 kernels of another library: rounding only
    assert math.isfinite(errors["openvino_default"])  # its accuracy: tests/test_bench_peers.py
    assert data["environment"]["openvino"] is not None


def test_report_says_which_precisions_the_cpu_runs_natively(tiny_run):
    stdout, data, _ = tiny_run
    native = data["environment"]["cpu_native_dtypes"]
    line = next(line for line in stdout.splitlines() if line.startswith("CPU precisions: "))
    for name, short in (("bfloat16", "bf16"), ("float16", "fp16")):
        assert (f"{short} native (" in line) == native[name]
        assert (f"{short} not native" in line) == (not native[name])


def test_plot_is_a_png(tiny_run):
    _, _, png = tiny_run
    import matplotlib.image
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(str(png)).shape[:2]
    assert height > 100 and width > 100


@pytest.mark.parametrize("argv,message", [
    (["--models", "w17"], "unknown model name 'w17'"),
    (["--batch", "1,x"], "bad batch list '1,x'"),
    (["--batch", "0"], "bad batch list '0'"),
    (["--dtype", "fp8"], "unknown precision 'fp8'"),
    (["--peers", "tensorrt"], "unknown peer 'tensorrt'"),
])
def test_bad_options_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_input_size_is_checked_per_model(capsys):
    """Nearest-upsampling models need sizes whose branches halve exactly; segmentation models take any size."""
    assert cli.main(["bench", "--input-size", "100"]) == 2
    assert "HRNet cannot take a 100x100 input" in capsys.readouterr().err
    assert cli.main(["bench", "--models", "seg_hrnetv2_w18_small,w18", "--input-size", "100"]) == 2
    assert "HRNet cannot take a 100x100 input" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["bench", "--models", "seg_hrnetv2_w18_small", "--input-size", "100"])
    assert bench.resolve_settings(args).input_size == (100, 100)


@pytest.mark.parametrize("argv,message", [
    (["--device", "cpu", "--cuda-graph"], "--cuda-graph needs a CUDA device"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--device", "cpu", "--reps", "0"], "--reps must be >= 1"),
    (["--device", "cpu", "--threads", "0"], "--threads must be >= 1"),
    (["--device", "cpu", "--dtype", "fp16"], "--dtype fp16 cannot run on cpu"),
    (["--device", "cpu", "--dtype", "bf16", "--peers", "onnxruntime"], "onnxruntime peer runs in fp32 only"),
])
def test_impossible_settings_fail_before_any_work(capsys, monkeypatch, argv, message):
    # This CPU's fp16/bf16 support must not decide the outcome: fp16 reads as unsupported, bf16 as supported.
    monkeypatch.setattr(bench.settings, "cpu_supports", lambda dtype: dtype != "fp16")
    assert cli.main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hrnet-fast bench: error: ") and message in err


def test_model_names_accept_short_full_and_seed_spellings():
    assert bench.parse_models("w18, HRNet_W32_C,hrnet-w48,hrnet_w18") == ["hrnet_w18", "hrnet_w32", "hrnet_w48"]
    assert bench.parse_models("all") == hrnet_fast.list_models()
    assert bench.parse_input_size("256x192") == (256, 192)
    assert bench.parse_dtypes("float16,bf16,fp16") == ["fp16", "bf16"]
    assert bench.parse_peers("all") == ["all"]


@pytest.mark.parametrize("bf16_native,dtypes", [(True, ["fp32", "bf16"]), (False, ["fp32"])])
def test_cpu_default_precisions_are_fp32_and_bf16_where_native(monkeypatch, bf16_native, dtypes):
    monkeypatch.setattr(bench.settings, "cpu_supports", lambda dtype: dtype == "fp32" or bf16_native)
    args = cli.build_parser().parse_args(["bench", "--device", "cpu"])
    assert bench.resolve_settings(args).dtypes == dtypes


@pytest.mark.parametrize("bf16", [True, False])
def test_cpu_support_follows_cpu_features(monkeypatch, bf16):
    from hrnet_fast import cpu_features
    monkeypatch.setattr(cpu_features, "native_dtypes", lambda: {"float32": True, "bfloat16": bf16, "float16": False})
    assert [bench.cpu_supports(d) for d in ("fp32", "bf16", "fp16")] == [True, bf16, False]


def test_openvino_peer_needs_fp32_on_the_cpu(capsys, monkeypatch):
    monkeypatch.setattr(bench.settings, "cpu_supports", lambda dtype: True)
    assert cli.main(["bench", "--device", "cpu", "--dtype", "bf16", "--peers", "openvino"]) == 2
    assert "the openvino peer runs in fp32 only" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["bench", "--device", "cpu", "--dtype", "fp32,bf16", "--peers", "openvino"])
    settings = bench.resolve_settings(args)
    assert settings.implementations == ["reference", "converted", "openvino_fp32", "openvino_default"]
    assert [settings.runs("openvino_default", d) for d in ("fp32", "bf16")] == [True, False]


@pytest.mark.parametrize("argv,peers", [
    (["--device", "cpu", "--peers", "all"], ["channels_last", "compile", "onnxruntime", "openvino"]),
    (["--device", "cpu", "--peers", "all", "--dtype", "bf16"], ["channels_last", "compile"]),
    (["--device", "cpu", "--peers", "compile,channels_last"], ["compile", "channels_last"]),
])
def test_all_peers_means_those_that_run_here(monkeypatch, argv, peers):
    monkeypatch.setattr(bench.settings, "cpu_supports", lambda dtype: True)
    args = cli.build_parser().parse_args(["bench", *argv])
    assert bench.resolve_settings(args).peers == peers


def test_missing_convert_fails_loudly(capsys, monkeypatch):
    monkeypatch.delattr(hrnet_fast, "convert")
    assert cli.main(["bench", "--device", "cpu"]) == 2
    assert "hrnet_fast.convert() is not available" in capsys.readouterr().err


def _raise_boom(*_):
    raise RuntimeError("boom\nlater lines stay out of the report")


def _eager_up_to_batch_1(model, ctx):
    """channels_last eager that fails to run from batch 2 on, as a runtime that cannot compile a shape would."""
    runner = bench.SPECS["channels_last"].build(model, ctx)

    def forward(x):
        if x.shape[0] > 1:
            raise ValueError(f"no batch {x.shape[0]}")
        return runner.forward(x)
    return bench.Implementation(forward, runner.prepare)


def _replace_build(monkeypatch, impl, build):
    monkeypatch.setitem(bench.SPECS, impl, dataclasses.replace(bench.SPECS[impl], build=build))


FAILING_ARGS = ["--models", "w18_small", "--input-size", "64", "--batch", "1,2", "--reps", "2", "--warmup", "0",
                "--device", "cpu", "--dtype", "fp32"]


def test_a_peer_that_fails_is_reported_and_the_others_are_timed(capsys, monkeypatch, tmp_path):
    # onnxruntime fails to build; compile's slot holds a peer that runs batch 1 and fails at batch 2.
    _replace_build(monkeypatch, "onnxruntime", _raise_boom)
    _replace_build(monkeypatch, "compile", _eager_up_to_batch_1)
    json_path, png_path = tmp_path / "run.json", tmp_path / "plot.png"
    assert cli.main(["bench", *FAILING_ARGS, "--peers", "channels_last,onnxruntime,compile", "--json",
                     str(json_path), "--plot", str(png_path)]) == 0
    stdout = capsys.readouterr().out
    tables = markdown_tables(stdout)
    for impl in ("reference", "converted", "channels_last"):
        assert all(re.fullmatch(NUMBER + MARKED, cell) for cell in tables[f"FP32, {bench.LABELS[impl]}"][1][1:])
    assert tables[f"FP32, {bench.LABELS['onnxruntime']}"][1][1:] == ["failed: RuntimeError: boom"] * 2
    compiled = tables[f"FP32, {bench.LABELS['compile']}"][1][1:]
    assert re.fullmatch(NUMBER + MARKED, compiled[0]) and compiled[1] == "failed: ValueError: no batch 2"
    speedups = {row[2]: row[3:] for row in next(rows for title, rows in tables.items() if title.startswith("Speed-up"))}
    assert speedups["onnxruntime"] == ["failed", "failed"] and speedups["compile"][1] == "failed"
    assert "later lines" not in stdout

    data = json.loads(json_path.read_text())
    assert data["models"]["hrnet_w18_small"]["failed"] == {
        "fp32": {"onnxruntime": "RuntimeError: boom", "compile": "ValueError: no batch 2"}}
    timed = {(r["implementation"], r["batch"]) for r in data["results"]}
    assert timed == {(impl, b) for impl in ("reference", "converted", "channels_last") for b in (1, 2)} | {
        ("compile", 1)}
    assert png_path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("build", [_raise_boom, lambda model, ctx: bench.Implementation(_raise_boom)],
                         ids=["build", "run"])
def test_a_failure_of_the_converted_model_still_raises(monkeypatch, build):
    _replace_build(monkeypatch, "converted", build)
    with pytest.raises(RuntimeError, match="^boom"):
        cli.main(["bench", *FAILING_ARGS, "--peers", "channels_last"])


def test_timing_stats_percentiles_of_known_samples():
    stats = TimingStats.from_samples([float(v) for v in range(10, 0, -1)])  # 1..10 ms, unsorted
    # Inclusive quantiles interpolate: p20 at 1 + 0.2 * 9, p80 at 1 + 0.8 * 9.
    assert (stats.median_ms, stats.p20_ms, stats.p80_ms, stats.reps) == (5.5, pytest.approx(2.8),
                                                                          pytest.approx(8.2), 10)
    with pytest.raises(ValueError, match="no timing samples"):
        TimingStats.from_samples([])


def test_round_robin_interleaves_and_rotates_the_first_call():
    calls: List[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    stats = time_round_robin(fns, "cpu", warmup=1, reps=3, rewarm=False)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert {name: s.reps for name, s in stats.items()} == {"a": 3, "b": 3, "c": 3}


def test_each_timed_call_follows_an_untimed_call_of_the_same_implementation(monkeypatch):
    calls: List[str] = []
    real_timer = timing._CallTimer.__call__

    def marking_timer(self, fn):
        calls.append("timed:")  # the next recorded call is the one being timed
        return real_timer(self, fn)

    monkeypatch.setattr(timing._CallTimer, "__call__", marking_timer)
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    stats = time_round_robin(fns, "cpu", warmup=1, reps=3)
    rounds = ["abc", "bca", "cab"]  # the first implementation rotates each round
    expected = list("abc") + [call for order in rounds for n in order for call in (n, "timed:", n)]
    assert calls == expected
    assert {name: s.reps for name, s in stats.items()} == {"a": 3, "b": 3, "c": 3}


def test_round_robin_without_reps_runs_at_least_min_reps():
    calls: List[str] = []
    stats = time_round_robin({"only": lambda: calls.append("x")}, "cpu", warmup=0, min_time=0.0, min_reps=4)
    assert len(calls) == 2 * 4 and stats["only"].reps == 4  # each timed call follows an untimed one


def test_round_robin_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one callable"):
        time_round_robin({}, "cpu")
    with pytest.raises(ValueError, match="reps must be >= 1"):
        time_round_robin({"a": lambda: None}, "cpu", reps=0)
