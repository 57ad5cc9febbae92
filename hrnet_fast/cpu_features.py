"""Which reduced precisions this CPU computes natively, as oneDNN sees it in this process.

    from hrnet_fast import cpu_features
    cpu_features.native_dtypes()
    # {'float32': True, 'bfloat16': True, 'float16': False, 'bfloat16_how': 'AVX512-BF16', 'float16_how': None,
    #  'capability': 'AVX512', 'flags': ['avx2', 'avx512bw', 'avx512_bf16']}

"native" means oneDNN runs convolutions in that dtype (fp32 accumulation inside) instead of a slow reference
path; the /proc/cpuinfo flags say which instructions make it so.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Tuple

import torch

# The instructions behind each reduced-precision path, best first.
_BF16_HOW = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx512bw", "AVX512 (bf16 by conversion)"))
_FP16_HOW = (("amx_fp16", "AMX-FP16"), ("avx512_fp16", "AVX512-FP16"))
_REPORTED = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_fp16")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> List[str]:
    """The flags of ``_REPORTED`` this CPU has (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in _REPORTED if flag in present]
    except OSError:
        pass
    return []


def _how(native: bool, table: Sequence[Tuple[str, str]]) -> Optional[str]:
    if not native:
        return None
    return next((name for flag, name in table if flag in cpu_flags()), "yes (flags unknown)")


@functools.lru_cache(maxsize=None)
def native_dtypes() -> Dict[str, object]:
    """``float32`` (always True), ``bfloat16`` / ``float16`` (oneDNN runs that dtype natively), ``*_how`` (the
    instruction set that makes it native, or None), ``capability`` (ATen's vector level) and ``flags``."""
    mkldnn = torch.backends.mkldnn.is_available()
    bf16 = mkldnn and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    fp16 = mkldnn and bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return {"float32": True, "bfloat16": bf16, "float16": fp16, "bfloat16_how": _how(bf16, _BF16_HOW),
            "float16_how": _how(fp16, _FP16_HOW), "capability": torch.backends.cpu.get_cpu_capability(),
            "flags": cpu_flags()}
