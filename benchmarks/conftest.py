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
