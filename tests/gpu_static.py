"""Compiles the Triton kernels for sm_90 on a machine without a GPU, exactly as a launch on HRNet-W18 would, and
reports what the compiler did: registers, spill bytes, and how the kernel reads global memory.

How a launch is reproduced: the public launcher (``hrnet_fast_kernels.<op>.<op>``) is called on CPU tensors of a
W18 call's shapes, dtype and layout, with the kernel's ``run`` replaced by a recorder. The recorded arguments go
through Triton's own binder and argument packing for a ``GPUTarget("cuda", 90, 32)`` backend, so the compiled
variant has the same constexprs and divisibility specialisations a real launch would get; ``triton.compile`` then
runs the whole pipeline down to a cubin with Triton's bundled ptxas, whose ``-v`` report gives registers and
spills.

Must run without ``TRITON_INTERPRET`` (the kernels must be real JIT functions): ``tests/test_static_gpu.py`` runs
it in a subprocess. Run it directly to print the per-shape table:

    env -u TRITON_INTERPRET python tests/gpu_static.py [--full] [--json PATH]

``--full`` compiles every conv shape of the W18 forward (stem and head included) in fp16 and bf16 plus the int64
variants; the default compiles the HRNet branch shapes (channels 18/36/72/144 in and out), fp16 and bf16.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Callable, Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from w18_calls import w18_calls  # noqa: E402

BRANCH_CHANNELS = {18, 36, 72, 144}
DTYPES = ("fp16", "bf16")
ARCH = 90


# ------------------------------------------------------------------------------------------ compiling

def _ptxas_report(log: str) -> Tuple[int, int]:
    """(registers, spill bytes: stores + loads) from ptxas -v output for one kernel."""
    regs = re.search(r"Used (\d+) registers", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    if regs is None or stores is None or loads is None:
        raise RuntimeError(f"unexpected ptxas report:\n{log}")
    return int(regs.group(1)), int(stores.group(1)) + int(loads.group(1))


def _run_ptxas(ptx: str) -> str:
    """ptxas -v's report for ``ptx`` (Triton's bundled ptxas), for kernels Triton took from its cache."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run([get_ptxas(ARCH).path, "-v", f"--gpu-name={sm_arch_from_capability(ARCH)}", src, "-o",
                               src + ".o"],
                              capture_output=True, text=True, check=True)
    return done.stderr + done.stdout


_LOAD = re.compile(r"^\s*(?:@%p\d+\s+)?(ld\.global[\w.]*|cp\.async\.c[ag]\.shared\.global[\w.]*)\s+(.*)$", re.M)


def global_loads(ptx: str) -> Dict[str, int]:
    """Global-memory reads in the PTX by width in bytes: {"ld4": n, "ld16": n, "cp.async16": n, ...}."""
    out: Counter = Counter()
    for op, operands in _LOAD.findall(ptx):
        if op.startswith("cp.async"):
            size = int(re.search(r"\],\s*(0x[0-9a-fA-F]+|\d+)", operands).group(1), 0)
            out[f"cp.async{size}"] += 1
            continue
        vec = re.search(r"\.v(\d)", op)
        bits = int(re.search(r"\.[bfsu](\d+)", op).group(1))
        out[f"ld{(int(vec.group(1)) if vec else 1) * bits // 8}"] += 1
    return dict(out)


class Recorder:
    """Stands in for a kernel's ``run``: keeps the arguments of each launch instead of launching."""

    def __init__(self):
        self.launches: List[Tuple[tuple, dict]] = []

    def __call__(self, *args, grid, warmup, **kwargs):
        self.launches.append((args, kwargs))


def compile_recorded(jit_fn, args: tuple, kwargs: dict, caches: Dict) -> Dict[str, Any]:
    """Compiles one recorded launch of ``jit_fn`` for sm_90 as Triton's launcher would specialise it; ``caches``
    keeps, per kernel, its binder and each distinct variant's result (a variant compiles once per run)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", ARCH, 32)
    cache = caches.setdefault(jit_fn.fn.__qualname__, {})
    if "binder" not in cache:
        cache["backend"] = make_backend(target)
        cache["binder"] = create_function_from_signature(jit_fn.signature, jit_fn.params, cache["backend"])
    backend, binder = cache["backend"], cache["binder"]
    kwargs = {**kwargs, "debug": False}
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit_fn._pack_args(backend, kwargs, bound, specialization, options)
    key = (repr(sorted(signature.items())), repr(sorted(constexprs.items())), repr(sorted(attrs.items())),
           repr(options))
    if key in cache:
        return cache[key]
    log = io.StringIO()
    begin = time.perf_counter()
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report is printed to stdout
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(jit_fn, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
    finally:
        knobs.nvidia.dump_ptxas_log = False
    report = log.getvalue() or _run_ptxas(compiled.asm["ptx"])  # empty when Triton's cache had the kernel
    regs, spills = _ptxas_report(report)
    cache[key] = dict(registers=regs, spill_bytes=spills, loads=global_loads(compiled.asm["ptx"]),
                      shared_bytes=compiled.metadata.shared, compile_s=round(time.perf_counter() - begin, 2))
    return cache[key]


def _config_name(kwargs: dict) -> str:
    tile = "x".join(str(kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in kwargs)
    tile = tile or str(kwargs.get("BLOCK"))
    return f"{tile} w{kwargs.get('num_warps')} s{kwargs.get('num_stages')}"


# ------------------------------------------------------------------------------------------ the two kernels

def conv_records(shapes: List[Dict], dtypes, int64: bool, cache: Dict) -> List[Dict]:
    """One record per (shape, dtype, config) for the conv kernel, channels_last as converted models run it.

    Operand loads are read off a variant without bias and residual, whose only global loads are the operands;
    registers and spills off the real variant (bias and residual as the call has them)."""
    import torch

    import hrnet_fast_kernels.conv_bn_act as conv
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    kernel = conv._conv_bn_act_kernel
    records = []
    original_run, original_candidates = kernel.run, conv.candidates
    try:
        for s in shapes:
            for dtype in dtypes:
                x = torch.empty(1, s["cin"], s["h"], s["w"], dtype=dt[dtype]).to(memory_format=torch.channels_last)
                weight = torch.empty(s["cout"], s["cin"], s["k"], s["k"], dtype=dt[dtype])
                bias = torch.empty(s["cout"], dtype=dt[dtype])
                ho = (s["h"] + 2 * s["padding"] - s["k"]) // s["stride"] + 1
                wo = (s["w"] + 2 * s["padding"] - s["k"]) // s["stride"] + 1
                residual = (torch.empty(1, s["cout"], ho, wo, dtype=dt[dtype]).to(memory_format=torch.channels_last)
                            if s["residual"] else None)
                for i, config in enumerate(conv.all_gpu_configs(s["cin"], s["cout"], s["k"])):  # NHWC: row runs
                    recorder = Recorder()
                    kernel.run = recorder
                    conv.candidates = lambda *a, c=config: [c]  # the launcher runs exactly this config
                    # The ordinary launch (launch plans would need a compiled kernel).
                    conv._launch(x, weight, bias, s["stride"], s["padding"], residual, s["relu"], make_plan=False)
                    conv._launch(x, weight, None, s["stride"], s["padding"], None, False, make_plan=False)
                    conv.candidates = original_candidates
                    (args, kwargs), (op_args, op_kwargs) = recorder.launches
                    variants = [(False, kwargs)] + ([(True, {**kwargs, "INT64": True})] if int64 else [])
                    for is_int64, kw in variants:
                        real = compile_recorded(kernel, args, kw, cache)
                        # Load widths depend on the shape, not the tile: read them off the first config only.
                        operands = (compile_recorded(kernel, op_args, {**op_kwargs, "INT64": kw["INT64"]}, cache)
                                    if i == 0 else None)
                        records.append(dict(kernel="conv_bn_act", dtype=dtype, int64=is_int64, cin=s["cin"],
                                            shape=f"{s['cin']}->{s['cout']} k{s['k']}s{s['stride']} "
                                                  f"{s['h']}x{s['w']}{' +res' if s['residual'] else ''}"
                                                  f"{' relu' if s['relu'] else ''}",
                                            config=_config_name({**config.kwargs, "num_warps": config.num_warps,
                                                                 "num_stages": config.num_stages}),
                                            registers=real["registers"], spill_bytes=real["spill_bytes"],
                                            shared_bytes=real["shared_bytes"],
                                            operand_loads=None if operands is None else operands["loads"],
                                            calls_per_forward=s["count"]))
    finally:
        kernel.run, conv.candidates = original_run, original_candidates
    return records


# Bilinear fusions of HRNetV2-W18 segmentation at 512x1024 (channels_last, as fuse_records compiles): into the
# stride-4 branch from the three lower ones, and the head's 19-class sum, one per align_corners value.
SEG_FUSES = [dict(c=c, h=128, w=256, low=[(64, 128), (32, 64), (16, 32)], same=0, count=1, mode="bilinear",
                  align_corners=align_corners) for c, align_corners in ((18, False), (19, True))]


def _mode_label(fusion: Dict) -> str:
    if fusion.get("mode", "nearest") == "nearest":
        return ""
    return f" bilinear{' align_corners' if fusion.get('align_corners') else ''}"


def fuse_records(fuses: List[Dict], dtypes, int64: bool, cache: Dict) -> List[Dict]:
    """One record per (fusion call, dtype, tuning candidate) for the multires_fuse kernel, channels_last."""
    import torch

    import hrnet_fast_kernels.multires_fuse as fuse
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    kernel = fuse._multires_fuse_kernel
    records = []
    original_run = kernel.run
    try:
        for f in fuses:
            for dtype in dtypes:
                def t(h, w):
                    return torch.empty(1, f["c"], h, w, dtype=dt[dtype]).to(memory_format=torch.channels_last)
                recorder = Recorder()
                kernel.run = recorder
                mode = dict(mode=f.get("mode", "nearest"), align_corners=f.get("align_corners", False))
                fuse._launch(t(f["h"], f["w"]), [t(*hw) for hw in f["low"]],
                             [t(f["h"], f["w"]) for _ in range(f["same"])], True, mode["mode"], mode["align_corners"],
                             make_plan=False)
                (args, kwargs), = recorder.launches
                for config in fuse.candidates(kwargs["BILINEAR"]):
                    kw = {**kwargs, **config.all_kwargs()}
                    for is_int64 in ([False, True] if int64 else [False]):
                        rec = compile_recorded(kernel, args, {**kw, "INT64": is_int64}, cache)
                        records.append(dict(kernel="multires_fuse", dtype=dtype, int64=is_int64,
                                            shape=f"{f['c']}x{f['h']}x{f['w']} low {len(f['low'])} "
                                                  f"same {f['same']}{_mode_label(f)}",
                                            config=_config_name(kw), registers=rec["registers"],
                                            spill_bytes=rec["spill_bytes"], shared_bytes=rec["shared_bytes"],
                                            loads=rec["loads"], calls_per_forward=f["count"]))
    finally:
        kernel.run = original_run
    return records


# The default gate's bf16 sample: HRNet's basic-block convs (3x3, stride 1, residual), one per branch width.
BF16_SAMPLE = {(c, c, 3, 1, True) for c in BRANCH_CHANNELS}


def collect(full: bool = False) -> Dict[str, Any]:
    """Everything the static gates check, for W18's calls, and the wall time.

    Default (CI): conv in fp16 on every HRNet-branch shape (channels 18/36/72/144 in and out) and in bf16 and
    fp32 on ``BF16_SAMPLE``; multires_fuse in fp16 on every fusion call (and HRNetV2-W18 segmentation's bilinear
    ones, ``SEG_FUSES``); every config each call can launch
    with. ``full``: every conv shape of the forward (stem, transitions and head too) in fp16, bf16 and fp32,
    multires_fuse in fp16 and bf16, and the int64-index variants (reported, not gated)."""
    begin = time.perf_counter()
    convs, fuses = w18_calls()
    fuses = fuses + SEG_FUSES
    if full:
        jobs = [(conv_records, convs, ("fp16",)), (conv_records, convs, ("bf16", "fp32")),
                (fuse_records, fuses, DTYPES)]
    else:
        branch = [s for s in convs if s["cin"] in BRANCH_CHANNELS and s["cout"] in BRANCH_CHANNELS]
        sample = [s for s in branch if (s["cin"], s["cout"], s["k"], s["stride"], s["residual"]) in BF16_SAMPLE]
        jobs = [(conv_records, branch, ("fp16",)), (conv_records, sample, ("bf16", "fp32")),
                (fuse_records, fuses, ("fp16",))]
    # Two processes (the CI machine has two cores); each job's variants are distinct, so nothing compiles twice.
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1), mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_job, [(fn.__name__, calls, dtypes, full) for fn, calls, dtypes in jobs]))
    return dict(arch=f"sm_{ARCH}", full=full, records=[r for records, _ in results for r in records],
                compiles=sum(n for _, n in results), wall_s=round(time.perf_counter() - begin, 1))


def _job(spec) -> Tuple[List[Dict], int]:
    """One worker's share: (records, distinct compiles)."""
    name, calls, dtypes, int64 = spec
    cache: Dict = {}
    records = globals()[name](calls, dtypes, int64, cache)
    return records, sum(1 for per_kernel in cache.values() for k in per_kernel if isinstance(k, tuple))


# ------------------------------------------------------------------------------------------ first-forward variants

def forward_variants(input_size: Tuple[int, int] = (224, 224)) -> Dict[str, int]:
    """How many kernel variants a first W18 forward (batch 1, fp16, channels_last) compiles: distinct
    (signature with specialisations, constexprs, compile options) over every launch it makes, each tuning
    candidate included. Launches are reproduced as ``conv_records`` reproduces them; nothing is compiled."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    import hrnet_fast_kernels.conv_bn_act as conv
    import hrnet_fast_kernels.multires_fuse as fuse
    backend = make_backend(GPUTarget("cuda", ARCH, 32))

    def variant(jit_fn, launch):
        args, kwargs = launch
        kwargs = {**kwargs, "debug": False}
        binder = create_function_from_signature(jit_fn.signature, jit_fn.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = jit_fn._pack_args(backend, kwargs, bound, specialization, options)
        return repr((sorted(signature.items()), sorted(constexprs.items()), sorted(attrs.items()), options))

    def launches(kernel, module, call):
        """Every launch ``call`` makes with each of the candidates the launcher offers it."""
        recorder, original_run, original_candidates = Recorder(), kernel.run, module.candidates
        offered = []
        try:
            module.candidates = lambda *a: offered.extend(original_candidates(*a)) or offered[:1]
            kernel.run = recorder
            call()  # learns the candidates
            for config in offered[1:]:
                module.candidates = lambda *a, c=config: [c]
                call()
        finally:
            kernel.run, module.candidates = original_run, original_candidates
        return recorder.launches

    convs, fuses = w18_calls(input_size)
    cl, dt = torch.channels_last, torch.float16
    conv_variants, fuse_variants = set(), set()
    for s in convs:
        x = torch.empty(1, s["cin"], s["h"], s["w"], dtype=dt).to(memory_format=cl)
        weight = torch.empty(s["cout"], s["cin"], s["k"], s["k"], dtype=dt)
        ho = (s["h"] + 2 * s["padding"] - s["k"]) // s["stride"] + 1
        wo = (s["w"] + 2 * s["padding"] - s["k"]) // s["stride"] + 1
        residual = torch.empty(1, s["cout"], ho, wo, dtype=dt).to(memory_format=cl) if s["residual"] else None
        for launch in launches(conv._conv_bn_act_kernel, conv, lambda: conv._launch(
                x, weight, torch.empty(s["cout"], dtype=dt), s["stride"], s["padding"], residual, s["relu"],
                make_plan=False)):
            conv_variants.add(variant(conv._conv_bn_act_kernel, launch))
    for f in fuses:
        def t(h, w):
            return torch.empty(1, f["c"], h, w, dtype=dt).to(memory_format=cl)
        for launch in launches(fuse._multires_fuse_kernel, fuse, lambda: fuse._launch(
                t(f["h"], f["w"]), [t(*hw) for hw in f["low"]], [t(f["h"], f["w"]) for _ in range(f["same"])],
                True, "nearest", False, make_plan=False)):
            fuse_variants.add(variant(fuse._multires_fuse_kernel, launch))
    return dict(conv_calls=len(convs), conv_bn_act=len(conv_variants), fuse_calls=len(fuses),
                multires_fuse=len(fuse_variants))


def format_table(result: Dict[str, Any]) -> str:
    lines = [f"{'kernel':14} {'dtype':5} {'shape':34} {'config':16} {'regs':>4} {'spill':>5} loads"]
    for r in result["records"]:
        if r["int64"]:
            continue
        loads = r.get("operand_loads", r.get("loads")) or {}
        lines.append(f"{r['kernel']:14} {r['dtype']:5} {r['shape']:34} {r['config']:16} {r['registers']:>4} "
                     f"{r['spill_bytes']:>5} {' '.join(f'{k}:{v}' for k, v in sorted(loads.items()))}")
    int64 = [r for r in result["records"] if r["int64"]]
    if int64:
        worst = max(int64, key=lambda r: r["spill_bytes"])
        lines.append(f"int64 variants: {len(int64)}, max registers {max(r['registers'] for r in int64)}, "
                     f"with spills {sum(r['spill_bytes'] > 0 for r in int64)} (worst {worst['spill_bytes']} B: "
                     f"{worst['kernel']} {worst['shape']} {worst['config']})")
    lines.append(f"{result['compiles']} distinct compiles for {result['arch']} in {result['wall_s']} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every W18 conv shape and the int64 variants")
    parser.add_argument("--json", metavar="PATH", help="write the records as JSON")
    parser.add_argument("--count", action="store_true",
                        help="only count the variants a first W18 forward compiles (JSON on stdout); no compiling")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("gpu_static: run without TRITON_INTERPRET (the kernels must be compiled, not interpreted)",
              file=sys.stderr)
        return 2
    if args.count:
        print(json.dumps(forward_variants()))
        return 0
    result = collect(full=args.full)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
