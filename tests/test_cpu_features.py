"""cpu_features: what this CPU computes natively, as the conv path sees it (capped runs in test_cpu_isa_matrix)."""
from __future__ import annotations

import pytest
import torch

from hrnet_fast import cpu_features
from hrnet_fast.ops import cpu_conv


def test_native_dtypes_reports_what_the_conv_path_uses():
    d = cpu_features.native_dtypes()
    assert set(d) == {"float32", "bfloat16", "float16", "bfloat16_how", "float16_how", "capability",
                      "onednn_isa_cap", "flags"}
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


@pytest.mark.parametrize("flags,native,how", [
    (["avx2", "avx512bw", "avx512_bf16", "amx_bf16"], True, "AMX-BF16"),
    (["avx2", "avx512bw", "avx512_bf16"], True, "AVX512-BF16"),
    (["avx2", "avx512bw"], True, "AVX512 (bf16 by conversion)"),
    ([], True, "yes (flags unknown)"),
    (["avx2", "avx512bw", "amx_bf16"], False, None),
])
def test_bf16_names_the_best_instructions_it_runs_on(monkeypatch, flags, native, how):
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: flags)
    assert cpu_features._how(native, cpu_features._BF16_FLAGS) == how


def test_summary_names_each_dtype():
    line = cpu_features.summary()
    assert line.startswith("CPU: ATen ")
    assert "bfloat16" in line and "float16" in line

