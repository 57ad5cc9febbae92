"""pytest-benchmark suites: reference vs fused, side by side.

    pytest benchmarks/ --benchmark-only                      # measure; groups put each op or model cell together
    pytest benchmarks/ --benchmark-json out.json             # every figure, extra_info (GB/s, TFLOP/s) included
    HRNET_FAST_BENCH_TINY=1 pytest benchmarks/ --benchmark-disable   # each benchmark once, tiny shapes
    HRNET_FAST_BENCH_COMPILE=1 pytest benchmarks/test_bench_models.py  # add torch.compile (slow to compile)

Shapes and helpers live in ``bench_support.py``.
"""
import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # The project's pytest addopts carry --benchmark-disable so that the test suite never times anything.
    # Here timing is the point: benchmarks run unless --benchmark-disable is given on this command line
    # (which also lets --benchmark-only work, since pytest-benchmark refuses it beside --benchmark-disable).
    if "--benchmark-disable" not in config.invocation_params.args:
        config.option.benchmark_enable = True


def pytest_benchmark_update_machine_info(config, machine_info):
    """What a ``--benchmark-json`` result needs to be read and reproduced: the device and library versions as
    ``hrnet-fast bench`` records them, and the command (``benchmarks/summarize.py`` reads both)."""
    import shlex

    import hrnet_fast.bench as bench
    from bench_support import DEVICE
    machine_info["hrnet_fast"] = bench.environment(DEVICE)
    args = " ".join(shlex.quote(a) for a in config.invocation_params.args)
    machine_info["hrnet_fast"]["command"] = f"pytest {args}".strip()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Keeps the statistics and drops each benchmark's raw per-round timings: microsecond ops run hundreds of
    thousands of rounds, tens of MB of JSON that the statistics already summarise."""
    for bench in output_json["benchmarks"]:
        bench["stats"].pop("data", None)
