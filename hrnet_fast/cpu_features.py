"""What this CPU computes natively in reduced precision, as oneDNN and ATen see it in this process.

    from hrnet_fast import cpu_features
    cpu_features.native_dtypes()
    # {'float32': True, 'bfloat16': True, 'float16': False, 'capability': 'AVX512', 'onednn_isa_cap': None,
    #  'flags': ['avx2', 'avx512_bf16', 'avx512bw', ...], 'bfloat16_how': 'AVX512-BF16', 'float16_how': None}

"native" means oneDNN runs convolutions in that dtype (fp32 accumulation inside); elsewhere hrnet_fast widens the
input to float32, computes in float32 and rounds once (correct, but without the reduced-precision speed-up).
Both answers follow ``ONEDNN_MAX_CPU_ISA`` and ``ATEN_CPU_CAPABILITY`` as set when the process started, so a
capped process reports what it will actually run. The /proc/cpuinfo flags say what the hardware has regardless.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, List, Optional

import torch

# Flags that decide the reduced-precision kernels oneDNN picks, best first per dtype.
_BF16_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx_ne_convert", "AVX-NE-CONVERT"),
               ("avx512bw", "AVX512 (bf16 by conversion)"))
_FP16_FLAGS = (("amx_fp16", "AMX-FP16"), ("avx512_fp16", "AVX512-FP16"), ("avx_ne_convert", "AVX-NE-CONVERT"))
_REPORTED_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                   "avx_vnni", "avx_ne_convert", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> List[str]:
    """The x86 feature flags of the first CPU in /proc/cpuinfo that oneDNN's kernel choice depends on (empty
    where there is no /proc/cpuinfo, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in _REPORTED_FLAGS if flag in present]
    except OSError:
        pass
    return []


def _onednn_native(dtype: torch.dtype) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    fn = getattr(torch.ops.mkldnn, check, None)
    return bool(fn()) if fn is not None else False


def _how(native: bool, table) -> Optional[str]:
    if not native:
        return None
    flags = set(cpu_flags())
    return next((name for flag, name in table if flag in flags), "yes (flags unknown)")


@functools.lru_cache(maxsize=None)
def native_dtypes() -> Dict[str, object]:
    """Which dtypes this process's oneDNN computes natively on this CPU, and on what hardware.

    Keys: ``float32`` (always True), ``bfloat16`` and ``float16`` (bool: oneDNN runs convolutions in that dtype;
    False means hrnet_fast computes it in float32), ``bfloat16_how`` / ``float16_how`` (the instruction set that
    makes it native, e.g. "AMX-BF16", or None), ``capability`` (ATen's vectorised-kernel level,
    ``torch.backends.cpu.get_cpu_capability()``), ``onednn_isa_cap`` (``ONEDNN_MAX_CPU_ISA`` if set) and ``flags``
    (the relevant /proc/cpuinfo flags).
    """
    bf16, fp16 = _onednn_native(torch.bfloat16), _onednn_native(torch.float16)
    return {
        "float32": True,
        "bfloat16": bf16,
        "float16": fp16,
        "bfloat16_how": _how(bf16, _BF16_FLAGS),
        "float16_how": _how(fp16, _FP16_FLAGS),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
        "flags": cpu_flags(),
    }


def summary() -> str:
    """One line for ``hrnet-fast info`` and benchmark headers."""
    d = native_dtypes()
    parts = [f"ATen {d['capability']}"]
    if d["onednn_isa_cap"]:
        parts.append(f"oneDNN capped at {d['onednn_isa_cap']}")
    for name in ("bfloat16", "float16"):
        parts.append(f"{name} native ({d[name + '_how']})" if d[name] else f"{name} computed in float32")
    return "CPU: " + ", ".join(parts)
