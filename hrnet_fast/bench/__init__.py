"""``hrnet-fast bench``: latency of the reference HRNet vs ``hrnet_fast.convert()`` (and the peers a user would
pick instead), in the seed's table layout.

    hrnet-fast bench                                    # W18 on the best device, reference vs converted
    hrnet-fast bench --models w18,w32 --batch 1,32 --dtype fp16 --peers all --json out.json --plot out.png

Models get random weights with calibrated BatchNorm, so activations have a trained model's magnitudes. Every
implementation of a cell (model, precision, batch) is timed in one interleaved run (``hrnet_fast.timing``).
Beside latency it prints two figures that predict GPU speed where there is no GPU: ops dispatched and bytes of
activations written per forward (``hrnet_fast.counting``).

The package, by layer:
    options      the command's options and their parsers
    settings     a validated run (device defaults, impossible combinations refused)
    peers/       one module per implementation (eager, converted, compile, ONNX Runtime, OpenVINO), one interface
    runner       builds the implementations and times every cell
    compare      output-agnostic agreement with the reference (tensor, list or dict outputs)
    progress     the plan printed before timing, a line per implementation built and per cell timed
    disturbance  which cells a busy machine disturbed (spread, batch order, load), and the rerun command
    environment  device, versions, CPU facts, command line
    report, plot the printed tables, the JSON, the PNG
    command      ``main(args)``
"""
from .command import main
from .compare import flatten_outputs, relative_error
from .disturbance import Disturbances, find_disturbances
from .environment import command_line, cpu_model, environment, equivalent_command
from .options import (DTYPE_ALIASES, add_arguments, parse_batches, parse_dtypes, parse_input_size, parse_models,
                      parse_peers)
from .peers import (DTYPES, LABELS, PEERS, SPECS, BenchError, BuildContext, Implementation, ImplSpec,
                    build_implementation, peer_implementations)
from .plot import plot_speedups
from .progress import format_plan
from .report import format_report, to_json
from .runner import CALIBRATION, COUNT_BATCH, Results, reference_model, run
from .settings import CPU_DEFAULTS, GPU_DEFAULTS, Settings, cpu_supports, resolve_settings

__all__ = ["main", "add_arguments", "flatten_outputs", "relative_error", "Disturbances", "find_disturbances",
           "format_plan", "command_line", "cpu_model",
           "environment", "equivalent_command", "DTYPE_ALIASES", "parse_batches", "parse_dtypes",
           "parse_input_size", "parse_models", "parse_peers", "DTYPES", "LABELS", "PEERS", "SPECS", "BenchError",
           "BuildContext", "Implementation", "ImplSpec", "build_implementation", "peer_implementations",
           "plot_speedups", "format_report", "to_json", "CALIBRATION", "COUNT_BATCH", "Results", "reference_model",
           "run", "CPU_DEFAULTS", "GPU_DEFAULTS", "Settings", "cpu_supports", "resolve_settings"]
