"""cpu_features: what this CPU computes natively, as the conv path sees it (capped runs in test_cpu_isa_matrix)."""
from __future__ import annotations

import torch

from hrnet_fast import cpu_features
from hrnet_fast.ops import cpu_conv


def test_native_dtypes_reports_what_the_conv_path_uses():
    d = cpu_features.native_dtypes()
    assert d["float32"] is True
    assert d["capability"] == torch.backends.cpu.get_cpu_capability()
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        assert isinstance(d[name], bool)
        assert (d[name + "_how"] is not None) == d[name]
        if cpu_conv._onednn_ops():
            assert cpu_conv.native_compute(dtype) == d[name]
    # The hardware answer: oneDNN's native bfloat16/float16 needs one of these flags (where flags are readable).
    if d["flags"] and d["onednn_isa_cap"] is None:
        flags = set(d["flags"])
        assert not d["float16"] or flags & {"avx512_fp16", "avx_ne_convert", "amx_fp16"}
        assert not d["bfloat16"] or flags & {"avx512bw", "avx_ne_convert", "amx_bf16", "avx512_bf16"}


def test_summary_names_each_dtype():
    line = cpu_features.summary()
    assert line.startswith("CPU: ATen ")
    assert "bfloat16" in line and "float16" in line
