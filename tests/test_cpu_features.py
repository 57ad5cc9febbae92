"""``cpu_features.native_dtypes``: which reduced precisions oneDNN runs natively, and on what instructions."""
import pytest
import torch

from hrnet_fast import bench, cpu_features


def test_native_dtypes_has_every_key_and_fp32_is_always_native():
    d = cpu_features.native_dtypes()
    assert set(d) == {"float32", "bfloat16", "float16", "bfloat16_how", "float16_how", "capability", "flags"}
    assert d["float32"] is True
    for name in ("bfloat16", "float16"):
        assert isinstance(d[name], bool)
        assert (d[f"{name}_how"] is None) == (not d[name])
    assert d["capability"] == torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("flags,native,how", [
    (["avx2", "avx512bw", "avx512_bf16", "amx_bf16"], True, "AMX-BF16"),
    (["avx2", "avx512bw", "avx512_bf16"], True, "AVX512-BF16"),
    (["avx2", "avx512bw"], True, "AVX512 (bf16 by conversion)"),
    ([], True, "yes (flags unknown)"),
    (["avx2", "avx512bw", "amx_bf16"], False, None),
])
def test_bf16_names_the_best_instructions_it_runs_on(monkeypatch, flags, native, how):
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: flags)
    assert cpu_features._how(native, cpu_features._BF16_HOW) == how


@pytest.mark.parametrize("bf16", [True, False])
def test_bench_follows_native_dtypes(monkeypatch, bf16):
    monkeypatch.setattr(cpu_features, "native_dtypes", lambda: {"float32": True, "bfloat16": bf16, "float16": False})
    assert [bench.cpu_supports(d) for d in ("fp32", "bf16", "fp16")] == [True, bf16, False]
