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
from typing import Any, Callable, Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRANCH_CHANNELS = {18, 36, 72, 144}
DTYPES = ("fp16", "bf16")
ARCH = 90


# ------------------------------------------------------------------------------------------ W18's calls

def w18_calls(input_size: Tuple[int, int] = (224, 224)) -> Tuple[List[Dict], List[Dict]]:
    """The distinct conv_bn_act and multires_fuse calls of a converted HRNet-W18 forward at batch 1.

    conv: dict(cin, cout, k, stride, padding, h, w, residual, relu, count); fuse: dict(c, h, w, low: [(h, w)],
    same: int, count). Shapes are read by hooks on a converted model run with the reference backend.
    """
    import torch

    import hrnet_fast
    from hrnet_fast.convert.fused import FusedConvBNAct, FusedHRFuse

    torch.manual_seed(0)
    model = hrnet_fast.convert(hrnet_fast.create_model("hrnet_w18").eval(), backend="torch")
    convs: Counter = Counter()
    fuses: Counter = Counter()

    def conv_hook(mod, args, kwargs):
        x = args[0]
        residual = kwargs.get("residual", args[1] if len(args) > 1 else None)
        cout, cin, k, _ = mod.weight.shape
        convs[(cin, cout, k, mod.stride, mod.padding, x.shape[2], x.shape[3], residual is not None, mod.relu)] += 1

    def fuse_hook(mod, args, out):
        fuses[(out.shape[1], out.shape[2], out.shape[3], tuple(mod.up_src), len(mod.down_src), mod.index)] += 1

    for mod in model.modules():
        if isinstance(mod, FusedConvBNAct):
            mod.register_forward_pre_hook(conv_hook, with_kwargs=True)
        elif isinstance(mod, FusedHRFuse):
            mod.register_forward_hook(fuse_hook)
    with torch.no_grad():
        model(torch.randn(1, 3, *input_size))
    conv_list = [dict(cin=c[0], cout=c[1], k=c[2], stride=c[3], padding=c[4], h=c[5], w=c[6], residual=c[7],
                      relu=c[8], count=n) for c, n in sorted(convs.items())]
    fuse_list = []
    for (c, h, w, up_src, n_same, index), n in sorted(fuses.items()):
        low = [(h >> (j - index), w >> (j - index)) for j in up_src]
        fuse_list.append(dict(c=c, h=h, w=w, low=low, same=n_same, count=n))
    return conv_list, fuse_list


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


def compile_recorded(jit_fn, args: tuple, kwargs: dict, cache: Dict) -> Dict[str, Any]:
    """Compiles one recorded launch of ``jit_fn`` for sm_90 as Triton's launcher would specialise it."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", ARCH, 32)
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
                for config in conv.all_gpu_configs(s["cin"], s["cout"]):
                    recorder = Recorder()
                    kernel.run = recorder
                    conv.candidates = lambda *a, c=config: [c]  # the launcher runs exactly this config
                    conv.conv_bn_act(x, weight, bias, stride=s["stride"], padding=s["padding"], residual=residual,
                                     relu=s["relu"])
                    conv.conv_bn_act(x, weight, None, stride=s["stride"], padding=s["padding"], residual=None,
                                     relu=s["relu"])
                    conv.candidates = original_candidates
                    (args, kwargs), (op_args, op_kwargs) = recorder.launches
                    variants = [(False, kwargs)] + ([(True, {**kwargs, "INT64": True})] if int64 else [])
                    for is_int64, kw in variants:
                        real = compile_recorded(kernel, args, kw, cache)
                        operands = compile_recorded(kernel, op_args, {**op_kwargs, "INT64": kw["INT64"]}, cache)
                        records.append(dict(kernel="conv_bn_act", dtype=dtype, int64=is_int64,
                                            shape=f"{s['cin']}->{s['cout']} k{s['k']}s{s['stride']} "
                                                  f"{s['h']}x{s['w']}{' +res' if s['residual'] else ''}",
                                            config=_config_name({**config.kwargs, "num_warps": config.num_warps,
                                                                 "num_stages": config.num_stages}),
                                            registers=real["registers"], spill_bytes=real["spill_bytes"],
                                            shared_bytes=real["shared_bytes"], operand_loads=operands["loads"],
                                            calls_per_forward=s["count"]))
    finally:
        kernel.run, conv.candidates = original_run, original_candidates
    return records


def fuse_records(fuses: List[Dict], dtypes, int64: bool, cache: Dict) -> List[Dict]:
    """One record per (fusion call, dtype, autotuning config) for the multires_fuse kernel, channels_last."""
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
                fuse.multires_fuse(t(f["h"], f["w"]), [t(*hw) for hw in f["low"]],
                                   [t(f["h"], f["w"]) for _ in range(f["same"])], relu=True)
                (args, kwargs), = recorder.launches
                for config in kernel.configs:
                    kw = {**kwargs, **config.all_kwargs()}
                    for is_int64 in ([False, True] if int64 else [False]):
                        rec = compile_recorded(kernel.fn, args, {**kw, "INT64": is_int64}, cache)
                        records.append(dict(kernel="multires_fuse", dtype=dtype, int64=is_int64,
                                            shape=f"{f['c']}x{f['h']}x{f['w']} low {len(f['low'])} "
                                                  f"same {f['same']}",
                                            config=_config_name(kw), registers=rec["registers"],
                                            spill_bytes=rec["spill_bytes"], shared_bytes=rec["shared_bytes"],
                                            loads=rec["loads"], calls_per_forward=f["count"]))
    finally:
        kernel.run = original_run
    return records


def collect(full: bool = False) -> Dict[str, Any]:
    """Everything the static gates check: conv and fusion records for W18's calls, and the wall time."""
    begin = time.perf_counter()
    convs, fuses = w18_calls()
    if not full:
        convs = [s for s in convs if s["cin"] in BRANCH_CHANNELS and s["cout"] in BRANCH_CHANNELS]
    conv_cache: Dict = {}
    fuse_cache: Dict = {}
    records = conv_records(convs, DTYPES, full, conv_cache) + fuse_records(fuses, DTYPES, full, fuse_cache)
    compiles = sum(1 for c in (conv_cache, fuse_cache) for k in c if isinstance(k, tuple))
    return dict(arch=f"sm_{ARCH}", full=full, records=records, compiles=compiles,
                wall_s=round(time.perf_counter() - begin, 1))


def format_table(result: Dict[str, Any]) -> str:
    lines = [f"{'kernel':14} {'dtype':5} {'shape':34} {'config':16} {'regs':>4} {'spill':>5} loads"]
    for r in result["records"]:
        if r["int64"]:
            continue
        loads = r.get("operand_loads", r.get("loads"))
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
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("gpu_static: run without TRITON_INTERPRET (the kernels must be compiled, not interpreted)",
              file=sys.stderr)
        return 2
    sys.path.insert(0, ROOT)
    result = collect(full=args.full)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
