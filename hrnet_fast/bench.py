"""``hrnet-fast bench``: latency of the reference HRNet vs ``hrnet_fast.convert()`` (and the peers a user would
pick instead), in the seed's table layout.

    hrnet-fast bench                                    # W18 on the best device, reference vs converted
    hrnet-fast bench --models w18,w32 --batch 1,32 --dtype fp16 --peers all --json out.json --plot out.png

Models get random weights with calibrated BatchNorm, so activations have a trained model's magnitudes. Every
implementation of a cell (model, precision, batch) is timed in one interleaved run (``hrnet_fast.timing``).
Beside latency it prints two figures that predict GPU speed where there is no GPU: ops dispatched and bytes of
activations written per forward (``hrnet_fast.counting``).
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import os
import platform
import re
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .timing import TimingStats, time_round_robin

DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
PEERS = ("channels_last", "compile", "onnxruntime")
LABELS = {
    "reference": "reference (eager PyTorch)",
    "converted": "converted (hrnet_fast.convert)",
    "channels_last": "channels_last eager",
    "compile": "torch.compile (inductor, freezing)",
    "onnxruntime": "ONNX Runtime (CPU)",
}
GPU_DEFAULTS = {"batches": [1, 4, 8, 32], "dtypes": ["fp32", "fp16"]}
CPU_DEFAULTS = {"batches": [1, 4], "dtypes": ["fp32"]}  # about two minutes on a 2-core machine
DEFAULT_MIN_TIME_S = 5.0
CALIBRATION = {"steps": 2, "batch": 2}
COUNT_BATCH = 1


class BenchError(Exception):
    """A setting the benchmark cannot run with (reported as a one-line error, exit status 2)."""


# ---------------------------------------------------------------------------------------------------- options

def parse_models(text: str) -> List[str]:
    """``w18,w32`` / ``hrnet_w18,HRNet_W32_C`` / ``all`` -> canonical names (ValueError naming a bad one)."""
    from .registry import list_models, resolve_name
    if text.strip().lower() == "all":
        return list_models()
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError("no model given; e.g. --models w18,w32 or --models all")
    out = [resolve_name(name) for name in names]  # ValueError naming a bad one and the valid names
    return list(dict.fromkeys(out))


def parse_batches(text: str) -> List[int]:
    """``1,4,8,32`` -> [1, 4, 8, 32]; each must be a positive integer."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(re.fullmatch(r"\d+", t) and int(t) > 0 for t in items):
        raise ValueError(f"bad batch list {text!r}: give positive integers separated by commas, e.g. 1,4,8,32")
    return list(dict.fromkeys(int(t) for t in items))


def parse_dtypes(text: str) -> List[str]:
    """``fp32,fp16`` -> ['fp32', 'fp16'] (float32/float16/half/bfloat16 accepted too)."""
    out = []
    for t in (t.strip().lower() for t in text.split(",")):
        name = DTYPE_ALIASES.get(t, t)
        if name not in DTYPES:
            raise ValueError(f"unknown precision {t!r}: choose from {', '.join(DTYPES)}")
        out.append(name)
    return list(dict.fromkeys(out))


def parse_peers(text: str) -> List[str]:
    """``channels_last,compile,onnxruntime`` / ``none`` -> the list of peers; ``all`` -> ``["all"]``, which
    ``resolve_settings`` expands to the peers that run on the chosen device and precisions."""
    key = text.strip().lower()
    if key == "all":
        return ["all"]
    if key in ("", "none"):
        return []
    peers = [t.strip() for t in key.split(",") if t.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise ValueError(f"unknown peer {bad[0]!r}: choose from {', '.join(PEERS)}, all or none")
    return list(dict.fromkeys(peers))


def parse_input_size(text: str) -> Tuple[int, int]:
    """``224`` -> (224, 224); ``256x192`` or ``256,192`` -> (256, 192) (height, width)."""
    parts = re.split(r"[x,]", text.strip().lower())
    if not 1 <= len(parts) <= 2 or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise ValueError(f"bad input size {text!r}: give HxW or one side, e.g. 224 or 256x192")
    h, w = int(parts[0]), int(parts[-1])
    from .models import check_input_size
    check_input_size(h, w)
    return h, w


def _argtype(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wraps a parser so argparse reports its ValueError as a usage error (exit status 2)."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__.replace("parse_", "")
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=_argtype(parse_models), default=["hrnet_w18"],
                        help="comma-separated models (w18, hrnet_w32, HRNet_W48_C ...) or 'all' (default: w18)")
    parser.add_argument("--batch", type=_argtype(parse_batches), default=None,
                        help="comma-separated batch sizes (default: 1,4,8,32 on GPU; 1,4 on CPU)")
    parser.add_argument("--dtype", type=_argtype(parse_dtypes), default=None,
                        help="comma-separated precisions from fp32, fp16, bf16 "
                             "(default: fp32,fp16 on GPU; fp32 on CPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present, else cpu)")
    parser.add_argument("--input-size", type=_argtype(parse_input_size), default=(224, 224),
                        help="HxW or one side (default: 224)")
    parser.add_argument("--peers", type=_argtype(parse_peers), default=[],
                        help="what users pick instead, timed beside: channels_last, compile (torch.compile with "
                             "freezing; slow to compile), onnxruntime (CPU, fp32), 'all' (those that run on the "
                             "device) or 'none' (default: none)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and ONNX Runtime (default: torch's, one per core); on a busy "
                             "machine 1 avoids threads waiting on each other at every op")
    parser.add_argument("--cuda-graph", action="store_true", help="convert with cuda_graph=True (GPU only)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per implementation and cell (default: 3)")
    parser.add_argument("--reps", type=int, default=None,
                        help="exact timed calls per implementation and cell (default: as many as --min-time takes)")
    parser.add_argument("--min-time", type=float, default=DEFAULT_MIN_TIME_S,
                        help=f"seconds of timed calls per implementation and cell, at least 5 calls "
                             f"(default: {DEFAULT_MIN_TIME_S:g})")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write every figure, with the environment, as JSON")
    parser.add_argument("--plot", metavar="PATH", default=None, help="write a PNG of the speed-ups (matplotlib)")


# --------------------------------------------------------------------------------------------------- settings

@dataclass
class Settings:
    """A validated benchmark run."""

    models: List[str]
    batches: List[int]
    dtypes: List[str]
    device: torch.device
    input_size: Tuple[int, int]
    peers: List[str]
    cuda_graph: bool = False
    threads: Optional[int] = None
    warmup: int = 3
    reps: Optional[int] = None
    min_time: float = DEFAULT_MIN_TIME_S

    @property
    def implementations(self) -> List[str]:
        return ["reference", "converted"] + self.peers

    def runs(self, impl: str, dtype: str) -> bool:
        """Whether ``impl`` has a cell at ``dtype`` (ONNX Runtime runs fp32 only)."""
        return impl != "onnxruntime" or dtype == "fp32"


def cpu_supports(dtype: str) -> bool:
    """Whether oneDNN has a native ``dtype`` path on this CPU (without one, eager fp16/bf16 convolutions take a
    slow emulated path and the figures would mean nothing)."""
    if dtype == "fp32":
        return True
    probe = {"fp16": torch.ops.mkldnn._is_mkldnn_fp16_supported, "bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported}
    return bool(probe[dtype]())


def _dtype_supported(dtype: str, device: torch.device) -> Tuple[bool, str]:
    if device.type == "cuda":
        if dtype == "bf16" and not torch.cuda.is_bf16_supported():
            return False, f"{torch.cuda.get_device_name(device)} has no bf16 support"
        return True, ""
    if not cpu_supports(dtype):
        return False, (f"this CPU has no native {dtype} support in oneDNN (eager {dtype} would take a slow "
                       f"emulated path)")
    return True, ""


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Fills device-dependent defaults and checks the combination; BenchError says what is wrong."""
    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device.strip()):
            raise BenchError(f"--device must be cpu or cuda[:N], got {args.device!r}")
        device = torch.device(args.device.strip())
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BenchError("--device cuda was asked for, but torch sees no CUDA device on this machine")
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    dtypes = list(args.dtype or defaults["dtypes"])
    peers = list(args.peers)
    if peers == ["all"]:
        onnx_runs = device.type == "cpu" and "fp32" in dtypes
        peers = [p for p in PEERS if p != "onnxruntime" or onnx_runs]
    settings = Settings(models=list(args.models), batches=list(args.batch or defaults["batches"]),
                        dtypes=dtypes, device=device,
                        input_size=tuple(args.input_size), peers=peers, cuda_graph=args.cuda_graph,
                        threads=args.threads, warmup=args.warmup, reps=args.reps, min_time=args.min_time)
    for dtype in settings.dtypes:
        ok, why = _dtype_supported(dtype, device)
        if not ok:
            raise BenchError(f"--dtype {dtype} cannot run on {device}: {why}")
    if settings.cuda_graph and device.type != "cuda":
        raise BenchError("--cuda-graph needs a CUDA device; this run is on the CPU")
    if "onnxruntime" in settings.peers:
        if device.type != "cpu":
            raise BenchError("the onnxruntime peer runs on the CPU only; use --device cpu or leave it out of --peers")
        if "fp32" not in settings.dtypes:
            raise BenchError("the onnxruntime peer runs in fp32 only; add fp32 to --dtype or leave it out of --peers")
    if settings.threads is not None and settings.threads < 1:
        raise BenchError(f"--threads must be >= 1, got {settings.threads}")
    if settings.warmup < 0:
        raise BenchError(f"--warmup must be >= 0, got {settings.warmup}")
    if settings.reps is not None and settings.reps < 1:
        raise BenchError(f"--reps must be >= 1, got {settings.reps}")
    if settings.min_time < 0:
        raise BenchError(f"--min-time must be >= 0 seconds, got {settings.min_time}")
    return settings


# ------------------------------------------------------------------------------------------ implementations

@dataclass
class Implementation:
    """One way to run the model: ``forward(prepare(x))`` is a forward pass on the benchmark input ``x``."""

    forward: Callable[[Any], Any]
    prepare: Callable[[torch.Tensor], Any] = lambda x: x
    to_tensor: Callable[[Any], torch.Tensor] = lambda y: y


def _convert_fn() -> Callable[..., nn.Module]:
    """``hrnet_fast.convert``, or BenchError: the converted model is never silently replaced by another."""
    import hrnet_fast
    convert = getattr(hrnet_fast, "convert", None)
    if not callable(convert):  # missing, or only the subpackage without its function
        raise BenchError("hrnet_fast.convert() is not available in this installation; the benchmark cannot time "
                         "the converted model without it")
    return convert


def _eager(model: nn.Module, device: torch.device, dtype: torch.dtype,
           channels_last: bool = False) -> Implementation:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = copy.deepcopy(model).to(device=device, dtype=dtype, memory_format=fmt).eval()
    return Implementation(m, prepare=lambda x: x.contiguous(memory_format=fmt))


def _converted(model: nn.Module, device: torch.device, dtype: torch.dtype, cuda_graph: bool) -> Implementation:
    convert = _convert_fn()
    return Implementation(convert(copy.deepcopy(model).to(device), dtype=dtype, cuda_graph=cuda_graph, inplace=True))


def _compiled(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Implementation:
    m = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    # Freezing folds the weights (and BN) into constants, as an inference deployment would.
    return Implementation(torch.compile(m, options={"freezing": True}))


def _onnxruntime(model: nn.Module, input_size: Tuple[int, int]) -> Implementation:
    import onnxruntime as ort
    cpu = copy.deepcopy(model).cpu().float().eval()
    example = torch.randn(1, cpu.in_chans, *input_size)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The legacy (TorchScript) exporter needs no onnxscript; its tracer warns about the input checks.
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(cpu, (example,), path, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same cores torch gets
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return Implementation(lambda x: session.run(None, {"input": x})[0], prepare=lambda x: x.float().numpy(),
                          to_tensor=torch.from_numpy)


def build_implementation(name: str, model: nn.Module, device: torch.device, dtype: str, *,
                         input_size: Tuple[int, int] = (224, 224), cuda_graph: bool = False) -> Implementation:
    """The implementation ``name`` (reference, converted or a peer) of ``model`` at precision ``dtype``."""
    device, torch_dtype = torch.device(device), DTYPES[dtype]
    if name == "reference":
        return _eager(model, device, torch_dtype)
    if name == "converted":
        return _converted(model, device, torch_dtype, cuda_graph)
    if name == "channels_last":
        return _eager(model, device, torch_dtype, channels_last=True)
    if name == "compile":
        return _compiled(model, device, torch_dtype)
    if name == "onnxruntime":
        return _onnxruntime(model, input_size)
    raise ValueError(f"unknown implementation {name!r}; choose from reference, converted, {', '.join(PEERS)}")


def reference_model(name: str, device: torch.device, input_size: Tuple[int, int]) -> nn.Module:
    """The reference model ``name`` with random weights (seed 0) and BatchNorm calibrated on ``device`` (fast
    where there is a GPU), returned on the CPU in eval mode."""
    from .calibrate import calibrate_bn
    from .registry import create_model
    torch.manual_seed(0)
    model = create_model(name).to(device)
    calibrate_bn(model, input_size, steps=CALIBRATION["steps"], batch=CALIBRATION["batch"])
    return model.cpu().eval()


# ------------------------------------------------------------------------------------------------ measuring

@dataclass
class Results:
    """Everything one run measured."""

    settings: Settings
    timings: Dict[Tuple[str, str, int, str], TimingStats] = field(default_factory=dict)  # (model, dtype, batch, impl)
    rel_error: Dict[Tuple[str, str, str], float] = field(default_factory=dict)  # (model, dtype, impl) vs reference
    counts: Dict[Tuple[str, str, str], Any] = field(default_factory=dict)  # (model, dtype, impl) -> DispatchCounts
    profiles: Dict[str, Dict[str, float]] = field(default_factory=dict)  # model -> params/macs/flops
    wall_s: float = 0.0

    def speedup(self, model: str, dtype: str, batch: int, impl: str) -> Optional[float]:
        ref = self.timings.get((model, dtype, batch, "reference"))
        other = self.timings.get((model, dtype, batch, impl))
        return None if ref is None or other is None else ref.median_ms / other.median_ms


def _relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach().float().cpu(), ref.detach().float().cpu()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def _input(batch: int, settings: Settings, dtype: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, *settings.input_size, generator=gen)
    return x.to(device=settings.device, dtype=DTYPES[dtype])


def _count(results: Results, name: str, dtype: str, model: nn.Module, impls: Dict[str, Implementation]) -> None:
    """Ops and activation bytes per steady-state forward at batch 1, reference vs converted (without CUDA graphs,
    which replay every kernel from one launch and would hide them from the counter)."""
    from .counting import count_forward
    x = _input(COUNT_BATCH, results.settings, dtype)
    converted = impls["converted"]
    if results.settings.cuda_graph:
        converted = _converted(model, results.settings.device, DTYPES[dtype], cuda_graph=False)
    for impl, runner in (("reference", impls["reference"]), ("converted", converted)):
        with torch.no_grad():
            runner.forward(runner.prepare(x))  # first-call work (CPU weight packing, autotuning) is not per forward
        results.counts[(name, dtype, impl)] = count_forward(runner.forward, runner.prepare(x))


def _profile(model: nn.Module, input_size: Tuple[int, int]) -> Dict[str, float]:
    """Params, MACs and FLOPs (the MMClassification convention, see ``hrnet_fast.profile``)."""
    from .profile import profile
    p = profile(model, input_size)
    return {"params": float(p.params), "macs": float(p.macs), "flops": float(p.flops)}


def run(settings: Settings, progress: Optional[Any] = None) -> Results:
    """Times every (model, precision, batch) cell for every implementation; ``progress`` is a tqdm bar
    advanced once per cell."""
    results = Results(settings)
    begin = time.perf_counter()
    for name in settings.models:
        _status(progress, f"{name}: calibrating BN")
        model = reference_model(name, settings.device, settings.input_size)
        results.profiles[name] = _profile(model, settings.input_size)
        for dtype in settings.dtypes:
            _status(progress, f"{name} {dtype}: building implementations")
            impls = {impl: build_implementation(impl, model, settings.device, dtype, input_size=settings.input_size,
                                                 cuda_graph=settings.cuda_graph)
                     for impl in settings.implementations if settings.runs(impl, dtype)}
            _count(results, name, dtype, model, impls)
            for batch in settings.batches:
                _status(progress, f"{name} {dtype} batch {batch}")
                _time_cell(results, name, dtype, batch, impls)
                if progress is not None:
                    progress.update(1)
            del impls
            if settings.device.type == "cuda":
                torch.cuda.empty_cache()
    results.wall_s = time.perf_counter() - begin
    return results


def _time_cell(results: Results, name: str, dtype: str, batch: int, impls: Dict[str, Implementation]) -> None:
    settings = results.settings
    x = _input(batch, settings, dtype)
    inputs = {impl: runner.prepare(x) for impl, runner in impls.items()}
    if batch == settings.batches[0]:
        with torch.inference_mode():
            outs = {impl: runner.to_tensor(runner.forward(inputs[impl])) for impl, runner in impls.items()}
        for impl, out in outs.items():
            if impl != "reference":
                results.rel_error[(name, dtype, impl)] = _relative_error(out, outs["reference"])
    fns = {impl: (lambda r=runner, i=inputs[impl]: r.forward(i)) for impl, runner in impls.items()}
    stats = time_round_robin(fns, settings.device, warmup=settings.warmup, reps=settings.reps,
                             min_time=settings.min_time)
    for impl, s in stats.items():
        results.timings[(name, dtype, batch, impl)] = s


def _status(progress: Optional[Any], text: str) -> None:
    if progress is not None:
        progress.set_description_str(text)


# ---------------------------------------------------------------------------------------------- environment

def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(dev: torch.device, peers: Sequence[str] = ()) -> Dict[str, Any]:
    """Device, library versions and CPU facts a result on ``dev`` needs to be read and reproduced."""
    from . import __version__
    from .ops import backend_info
    from .ops.backends import OPS, select
    live = {name: {op: entry["ops"][op].get(dev.type, {}).get("live", False) for op in entry["ops"]}
            for name, entry in backend_info().items()}
    with warnings.catch_warnings():  # a fallback's warning was already shown when the model was converted
        warnings.simplefilter("ignore")
        selected = {op: select(op, dev, None) for op in OPS}
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
        "triton": _version("triton"),
        "onnxruntime": _version("onnxruntime") if "onnxruntime" in peers else None,
        "hrnet_fast": __version__,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # A busy machine slows every implementation; the interleaving keeps ratios fair, not absolute times.
        "load_average_1m_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "backends_live": live,
        "backends_selected": selected,  # what convert() runs each fused op with on this device
    }


def command_line() -> str:
    """How this process was started, as a shell command."""
    argv = list(sys.argv)
    prog = os.path.basename(argv[0]) if argv else "hrnet-fast"
    if prog == "__main__.py":
        prog = "python -m hrnet_fast"
    return " ".join([prog] + [shlex.quote(a) for a in argv[1:]])


def equivalent_command(settings: Settings) -> str:
    """An ``hrnet-fast bench`` command line that repeats these settings exactly."""
    parts = ["hrnet-fast", "bench", "--models", ",".join(settings.models),
             "--batch", ",".join(map(str, settings.batches)), "--dtype", ",".join(settings.dtypes),
             "--device", str(settings.device), "--input-size", "x".join(map(str, settings.input_size)),
             "--warmup", str(settings.warmup)]
    if settings.peers:
        parts += ["--peers", ",".join(settings.peers)]
    if settings.cuda_graph:
        parts.append("--cuda-graph")
    if settings.threads is not None:
        parts += ["--threads", str(settings.threads)]
    parts += ["--reps", str(settings.reps)] if settings.reps is not None else ["--min-time", f"{settings.min_time:g}"]
    return " ".join(parts)


# --------------------------------------------------------------------------------------------------- output

def _ms(v: float) -> str:
    return f"{v:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":--:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_report(results: Results, env: Dict[str, Any]) -> str:
    """The markdown the command prints: latency per precision and implementation (seed layout), speed-ups,
    dispatch counts and bytes, params and FLOPs."""
    s = results.settings
    h, w = s.input_size
    batch_cols = [f"batch_size={b} (ms)" for b in s.batches]
    out = [f"## hrnet-fast bench: {env['device_name']} ({s.device}, CPU threads: {env['torch_threads']}), "
           f"torch {env['torch']}, input {h}x{w}",
           f"Median latency of {s.reps or f'>= {s.min_time:g} s of'} timed calls per cell, implementations "
           f"interleaved; p20/p80 in --json.", ""]
    for dtype in s.dtypes:
        for impl in s.implementations:
            if not s.runs(impl, dtype):
                continue
            rows = [[m] + [_ms(results.timings[(m, dtype, b, impl)].median_ms) for b in s.batches] for m in s.models]
            out += [f"### {dtype.upper()}, {LABELS[impl]}", "", _table(["Models"] + batch_cols, rows), ""]
    out += ["### Speed-up vs the reference at the same precision (ratio of medians, >1 is faster)", ""]
    rows = []
    for m in s.models:
        for dtype in s.dtypes:
            for impl in s.implementations[1:]:
                if s.runs(impl, dtype):
                    ratios = [results.speedup(m, dtype, b, impl) for b in s.batches]
                    rows.append([m, dtype.upper(), impl] + [f"{r:.2f}x" for r in ratios])
    out += [_table(["Models", "Precision", "Implementation"] + [f"batch_size={b}" for b in s.batches], rows), ""]
    out += [f"### Per forward at batch {COUNT_BATCH}: ops dispatched and activation bytes written "
            "(launch count and memory traffic on a GPU)", ""]
    rows = []
    for m in s.models:
        for dtype in s.dtypes:
            ref, conv = results.counts[(m, dtype, "reference")], results.counts[(m, dtype, "converted")]
            rows.append([m, dtype.upper(), str(ref.ops), str(conv.ops), f"{ref.ops / max(conv.ops, 1):.2f}x",
                         f"{ref.bytes_written / 1e6:.1f}", f"{conv.bytes_written / 1e6:.1f}",
                         f"{ref.bytes_written / max(conv.bytes_written, 1):.2f}x"])
    out += [_table(["Models", "Precision", "Ops (reference)", "Ops (converted)", "Fewer ops",
                    "Written MB (reference)", "Written MB (converted)", "Fewer bytes"], rows), ""]
    out += [f"### Params and FLOPs at {h}x{w}", ""]
    rows = [[m, f"{p['params'] / 1e6:.2f}", f"{p['macs'] / 1e9:.3f}", f"{p['flops'] / 1e9:.3f}"]
            for m, p in results.profiles.items()]
    out += [_table(["Models", "Params (M)", "MACs (G)", "FLOPs (G, MMCls convention)"], rows), ""]
    errors = [f"{m} {d} {i}: {e:.1e}" for (m, d, i), e in results.rel_error.items()]
    out += [f"Relative L2 difference of outputs vs the reference at batch {s.batches[0]}: " + "; ".join(errors),
            f"Wall time {results.wall_s:.0f} s."]
    return "\n".join(out)


def to_json(results: Results, env: Dict[str, Any]) -> Dict[str, Any]:
    """Every figure of the run, with the environment and the command line."""
    s = results.settings
    records = []
    for (m, dtype, batch, impl), t in results.timings.items():
        records.append({"model": m, "dtype": dtype, "batch": batch, "implementation": impl, **t.as_dict(),
                        "speedup_vs_reference": results.speedup(m, dtype, batch, impl)})
    models = {}
    for m in s.models:
        counts = {dtype: {impl: results.counts[(m, dtype, impl)].as_dict() for impl in ("reference", "converted")}
                  for dtype in s.dtypes}
        errors = {dtype: {impl: e for (mm, d, impl), e in results.rel_error.items() if mm == m and d == dtype}
                  for dtype in s.dtypes}
        models[m] = {**results.profiles[m], "dispatch_per_forward": counts, "count_batch": COUNT_BATCH,
                     "rel_error_vs_reference": errors}
    return {
        "schema": "hrnet_fast.bench/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "equivalent_command": equivalent_command(s),
        "environment": env,
        "settings": {"models": s.models, "batches": s.batches, "dtypes": s.dtypes, "device": str(s.device),
                     "input_size": list(s.input_size), "implementations": s.implementations,
                     "cuda_graph": s.cuda_graph, "threads": s.threads, "warmup": s.warmup, "reps": s.reps,
                     "min_time_s": s.min_time, "calibration": CALIBRATION},
        "wall_s": results.wall_s,
        "models": models,
        "results": records,
    }


def plot_speedups(results: Results, path: str) -> None:
    """A PNG with one panel per precision: speed-up over the reference per batch size, one bar per
    (model, implementation)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = results.settings
    fig, axes = plt.subplots(1, len(s.dtypes), figsize=(5 + 2 * len(s.batches), 4), squeeze=False)
    series = [(m, impl) for m in s.models for impl in s.implementations[1:]]
    width = 0.8 / max(len(series), 1)
    for ax, dtype in zip(axes[0], s.dtypes):
        for k, (m, impl) in enumerate(series):
            if not s.runs(impl, dtype):
                continue
            ratios = [results.speedup(m, dtype, b, impl) for b in s.batches]
            ax.bar([i + k * width for i in range(len(s.batches))], ratios, width, label=f"{m} {impl}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(s.batches))])
        ax.set_xticklabels([str(b) for b in s.batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel("speed-up vs eager reference (x)")
        ax.set_title(f"{dtype.upper()} on {s.device}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm
    try:
        settings = resolve_settings(args)
        _convert_fn()  # fail before any work when convert() is missing
    except BenchError as e:
        print(f"hrnet-fast bench: error: {e}", file=sys.stderr)
        return 2
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    cells = len(settings.models) * len(settings.dtypes) * len(settings.batches)
    env = environment(settings.device, settings.peers)
    with tqdm(total=cells, unit="cell", file=sys.stderr, disable=None) as progress:
        results = run(settings, progress)
    env["load_average_1m_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(format_report(results, env))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(to_json(results, env), f, indent=2)
            f.write("\n")
    if args.plot:
        plot_speedups(results, args.plot)
    return 0
