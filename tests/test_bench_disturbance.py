"""``hrnet-fast bench`` on a busy machine: disturbed cells are found (spread, batch order, load at the start),
marked in the tables and the JSON with their reasons and a rerun command; and the plan and progress lines a long
run prints on stderr."""
import pytest
import torch

from hrnet_fast import bench, cli
from hrnet_fast.bench.disturbance import batch_order_reasons, find_disturbances, load_reason, spread_reason
from hrnet_fast.counting import DispatchCounts
from hrnet_fast.timing import TimingStats

def stats(median, spread=0.02):
    """Samples tightly around ``median`` unless ``spread`` (of the median, p20 to p80) says otherwise."""
    return TimingStats(median, median * (1 - spread / 2), median * (1 + spread / 2), 20)


def cpu_settings(**kwargs):
    fields = dict(models=["hrnet_w18"], batches=[1, 4], dtypes=["fp32"], device=torch.device("cpu"),
                  input_size=(224, 224), peers=[])
    return bench.Settings(**{**fields, **kwargs})


def test_spread_of_the_samples():
    assert spread_reason(stats(100.0, spread=0.10)) is None
    why = spread_reason(TimingStats(100.0, 60.0, 160.0, 20))
    assert "p20-p80 60.00-160.00 ms" in why and "100% of the median" in why


def test_a_smaller_batch_slower_than_a_larger_one_marks_the_smaller():
    """The figures seen on a busy machine: FP32 W18 batch 1 at 366 ms, batch 4 at 222 ms."""
    timings = {("hrnet_w18", "fp32", 1, "reference"): stats(366.0), ("hrnet_w18", "fp32", 4, "reference"): stats(222.0),
               ("hrnet_w18", "fp32", 1, "converted"): stats(26.0), ("hrnet_w18", "fp32", 4, "converted"): stats(89.8)}
    found = batch_order_reasons(timings)
    assert list(found) == [("hrnet_w18", "fp32", 1, "reference")]
    assert found[("hrnet_w18", "fp32", 1, "reference")] == "slower per call (366.00 ms) than batch 4 (222.00 ms)"


def test_batches_within_the_margin_are_not_an_inversion():
    # Launch-bound GPU cells: batch 4 can take the same time as batch 1, give or take noise.
    timings = {("m", "fp16", 1, "converted"): stats(6.83), ("m", "fp16", 4, "converted"): stats(6.80)}
    assert batch_order_reasons(timings) == {}


@pytest.mark.parametrize("load,cores,threads,busy", [(2.9, 2, 2, True), (0.3, 2, 2, False), (1.2, 2, 1, False),
                                                     (2.0, 2, 1, True), (None, 2, 2, False), (7.0, 16, 2, False)])
def test_load_at_the_start_against_the_threads_asked_for(load, cores, threads, busy):
    why = load_reason(load, cores, threads)
    assert (why is not None) == busy
    if busy:
        assert f"load average {load:.2f} on {cores} cores, with {threads} thread(s)" in why


def test_on_a_gpu_the_load_is_held_against_one_launching_thread():
    settings = cpu_settings(device=torch.device("cuda"))
    env = {"load_average_1m_before": 1.2, "cpu_count": 2, "torch_threads": 2}
    assert find_disturbances(settings, {}, env).load is None
    assert find_disturbances(cpu_settings(), {}, env).load is not None


def busy_results(settings):
    """A run as the busy machine gave it: the reference's batch 1 disturbed, everything else steady."""
    results = bench.Results(settings)
    medians = {("reference", 1): 366.0, ("reference", 4): 222.0, ("converted", 1): 26.0, ("converted", 4): 89.8}
    for (impl, batch), median in medians.items():
        results.timings[("hrnet_w18", "fp32", batch, impl)] = stats(median)
    results.counts = {("hrnet_w18", "fp32", impl): DispatchCounts(ops=10, bytes_written=10)
                      for impl in ("reference", "converted")}
    results.profiles = {"hrnet_w18": {"params": 1.0, "macs": 1.0, "flops": 1.0}}
    results.rel_error = {("hrnet_w18", "fp32", "converted"): 2.5e-5}
    return results


ENV = {"device_name": "a CPU", "torch_threads": 2, "torch": torch.__version__, "cpu_count": 2,
       "load_average_1m_before": 0.2, "cpu_native_dtypes": {"bfloat16": False, "float16": False, "capability": "AVX2"}}


def test_report_marks_the_disturbed_cells_and_says_how_to_rerun():
    settings = cpu_settings()
    text = bench.format_report(busy_results(settings), ENV)
    assert "| hrnet_w18 | 366.00 (!) | 222.00 |" in text  # the reference's table: batch 1 marked, batch 4 not
    assert "| hrnet_w18 | 26.00 | 89.80 |" in text  # converted's: neither
    assert "| hrnet_w18 | FP32 | converted | 14.08x (!) | 2.47x |" in text  # a ratio over a marked cell
    assert "**Disturbed run**: 1 cell(s) marked (!)" in text
    assert "- hrnet_w18 FP32 reference batch 1: slower per call (366.00 ms) than batch 4 (222.00 ms)" in text
    assert ("`hrnet-fast bench --models hrnet_w18 --batch 1,4 --dtype fp32 --device cpu --input-size 224x224 "
            "--warmup 3 --min-time 10`") in text


def test_json_carries_the_marks_and_the_rerun():
    settings = cpu_settings()
    data = bench.to_json(busy_results(settings), ENV)
    marked = {(r["implementation"], r["batch"]): r["disturbed"] for r in data["results"]}
    assert marked[("reference", 1)] == ["slower per call (366.00 ms) than batch 4 (222.00 ms)"]
    assert marked[("reference", 4)] == marked[("converted", 1)] == marked[("converted", 4)] == []
    assert data["disturbance"]["cells"] == 1 and data["disturbance"]["load_at_start"] is None
    assert data["disturbance"]["rerun"].startswith("hrnet-fast bench --models hrnet_w18 --batch 1,4")


def test_a_busy_start_is_reported_for_the_whole_run():
    results = busy_results(cpu_settings())
    results.timings[("hrnet_w18", "fp32", 1, "reference")] = stats(150.0)  # now in order
    busy = dict(ENV, load_average_1m_before=3.4)
    text = bench.format_report(results, busy)
    assert not [line for line in text.splitlines() if line.startswith("|") and "(!)" in line]  # no cell marked
    assert "**Disturbed run**: 0 cell(s) marked (!), and the machine was busy at the start" in text
    assert "- The whole run: the machine was busy at the start: 1-minute load average 3.40 on 2 cores" in text
    assert bench.to_json(results, busy)["disturbance"]["load_at_start"].startswith("the machine was busy")


def test_a_quiet_run_has_no_marks():
    results = busy_results(cpu_settings())
    results.timings[("hrnet_w18", "fp32", 1, "reference")] = stats(150.0)
    text = bench.format_report(results, ENV)
    assert "(!)" not in text and "Disturbed" not in text
    assert bench.to_json(results, ENV)["disturbance"] == {"cells": 0, "load_at_start": None, "rerun": None}


def test_plan_counts_implementations_times_cells(monkeypatch):
    monkeypatch.setattr(bench.settings, "cpu_supports", lambda dtype: True)
    args = cli.build_parser().parse_args(["bench", "--device", "cpu", "--peers", "all", "--dtype", "fp32,bf16"])
    plan = bench.format_plan(bench.resolve_settings(args))
    assert ("fp32: 7 implementations x 2 cell(s): reference, converted, channels_last, compile, onnxruntime, "
            "openvino_fp32, openvino_default") in plan
    assert "bf16: 4 implementations x 2 cell(s): reference, converted, channels_last, compile" in plan
    # 22 timings, each >= 5 s timed and as long untimed: at least 220 s.
    assert "22 timings of >= 5 s of timed calls each: at least 3.7 min" in plan and "torch.compile" in plan


def test_the_command_prints_the_plan_first_then_a_line_per_implementation(capsys):
    argv = ["bench", "--models", "w18_small", "--input-size", "64", "--batch", "1,2", "--reps", "2", "--warmup", "0",
            "--device", "cpu", "--dtype", "fp32", "--peers", "channels_last"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("hrnet-fast bench plan: 1 model(s) x 1 precision(s) x 2 batch size(s)")
    built = [line for line in lines if "implementation " in line]
    assert [line.split(" implementation ")[1].split(":")[0] for line in built] == [
        "1/3 reference", "2/3 converted", "3/3 channels_last"]
    assert lines.index(built[0]) > 2  # after the plan
    cells = [line for line in lines if " timed: " in line]
    assert [line.split("]")[0] for line in cells] == ["[hrnet_w18_small fp32 batch 1", "[hrnet_w18_small fp32 batch 2"]
    assert "cell 2/2 timed: 3 implementations" in cells[1]
