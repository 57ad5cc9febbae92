"""The residual summed in place on CPU: oneDNN writes a block's output over its shortcut only where nothing else
reads the shortcut (the previous block's output inside a branch, a downsampled shortcut), never over a tensor a
caller or a forward hook still holds."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import hrnet_fast
from cpu_paths import take_path
from hrnet_fast.convert.fused import FusedBlock, FusedBranch, FusedConvBNAct
from hrnet_fast.ops import cpu_conv
from hrnet_fast.ops.reference import conv_bn_act_ref
from tolerance import assert_matches_reference, assert_model_matches

SMALL = (64, 64)


def conv_case(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 9, 7, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(24, 16, 3, 3, generator=g) / 12).to(dtype)
    b = torch.randn(24, generator=g).to(dtype)
    r = torch.randn(2, 24, 9, 7, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    return x, w, b, r


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("free", [False, True], ids=["held", "free"])
def test_onednn_fused_writes_over_the_residual_only_when_free(monkeypatch, dtype, free):
    take_path(monkeypatch, "native")  # bf16 runs oneDNN's kernel where the CPU has it, an emulation elsewhere
    x, w, b, r = conv_case(dtype)
    before = r.clone()
    packed = cpu_conv.pack_weight(w, 1, 1, x.shape)
    y = cpu_conv.onednn_fused(x, packed, b, 1, 1, r, True, residual_is_free=free)
    assert_matches_reference(y, conv_bn_act_ref, x, w, b, residual=before, stride=1, padding=1, relu=True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    if free:
        assert y.data_ptr() == r.data_ptr()
    else:
        assert y.data_ptr() != r.data_ptr() and torch.equal(r, before)


@pytest.mark.parametrize("residual", ["nchw", "other dtype", "is x"])
def test_a_free_residual_oneDNN_cannot_write_into_is_copied(residual):
    x, w, b, r = conv_case(torch.float32)
    w = w[:, :16]
    if residual == "nchw":
        r = r.contiguous()
    elif residual == "other dtype":
        r = r.double()
    else:
        w, r = torch.randn(16, 16, 3, 3) / 12, x
    before = r.clone()
    y = cpu_conv.onednn_fused(x, cpu_conv.pack_weight(w, 1, 1, x.shape), b[:w.shape[0]], 1, 1, r, False,
                              residual_is_free=True)
    assert y.data_ptr() != r.data_ptr() and torch.equal(r, before)
    assert_matches_reference(y, conv_bn_act_ref, x, w, b[:w.shape[0]], residual=before.to(x.dtype), stride=1, padding=1,
                             relu=False)


def blocks_in_sequence(model: nn.Module):
    """(count of blocks, blocks whose shortcut nothing else reads) over the eager model's runs of residual
    blocks: every block after the first of its run, and a first block with a downsampled shortcut."""
    total = free = 0
    for m in model.modules():
        if type(m) is nn.Sequential and all(hasattr(b, "conv2") and hasattr(b, "downsample")
                                                           for b in m):
            total += len(m)
            free += len(m) - 1 + (m[0].downsample is not None)
    return total, free


def record_free_flags(monkeypatch):
    """What each converted conv with a residual is told about it (``residual_is_free``), in call order."""
    flags = []
    real = FusedConvBNAct.forward

    def spy(self, x, residual=None, residual_is_free=False):
        if residual is not None:
            flags.append(residual_is_free)
        return real(self, x, residual, residual_is_free)

    monkeypatch.setattr(FusedConvBNAct, "forward", spy)
    return flags


def test_converted_hrnet_sums_in_place_where_the_shortcut_is_dead(monkeypatch):
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(hrnet_fast.create_model("hrnet_w18_small", features_only=True), SMALL,
                                    steps=2, batch=2).eval()
    x = torch.randn(2, 3, *SMALL)
    total, free = blocks_in_sequence(model)
    fast = hrnet_fast.convert(model)
    assert sum(isinstance(m, FusedBranch) for m in fast.modules()) > 0
    flags = record_free_flags(monkeypatch)
    x_before = x.clone()
    # Every stage output (which the next stage's first blocks read as shortcuts) as eager's, to rounding.
    assert_model_matches(model, fast, x)
    assert torch.equal(x, x_before)
    assert len(flags) == total and sum(flags) == free


@pytest.mark.parametrize("hook", ["module", "last conv", "downsample", "global"])
def test_outputs_a_forward_hook_keeps_are_never_overwritten(monkeypatch, hook):
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(hrnet_fast.create_model("hrnet_w18_small"), SMALL, steps=2, batch=2).eval()
    fast = hrnet_fast.convert(model)
    kept = []

    def keep(module, inputs, output):
        kept.append((output, output.clone()))

    blocks = [m for m in fast.modules() if isinstance(m, FusedBlock)]
    if hook == "module":
        handles = [b.register_forward_hook(keep) for b in blocks]
    elif hook == "last conv":  # the block's output is its last conv's output: a hook there holds it too
        handles = [b.convs[-1].register_forward_hook(keep) for b in blocks]
    elif hook == "downsample":  # a downsampled shortcut is the downsample's last step's output
        downsamples = [b.downsample for b in blocks if b.downsample is not None]
        assert downsamples
        handles = [(d[-1] if isinstance(d, nn.Sequential) else d).register_forward_hook(keep) for d in downsamples]
    else:
        handles = [nn.modules.module.register_module_forward_hook(
            lambda m, i, o: keep(m, i, o) if isinstance(m, FusedBlock) else None)]
    flags = record_free_flags(monkeypatch)
    try:
        with torch.no_grad():
            fast(torch.randn(2, 3, *SMALL))
    finally:
        for h in handles:
            h.remove()
    assert len(kept) == (len(downsamples) if hook == "downsample" else len(blocks))
    for output, copy in kept:
        assert torch.equal(output, copy)
    # Only downsampled shortcuts (the block's own tensors) are still summed in place.
    downsampled = sum(b.downsample is not None for b in blocks)
    within_branches = blocks_in_sequence(model)[1] - downsampled  # blocks after the first of their branch
    assert sum(flags) == {"module": downsampled, "last conv": downsampled, "downsample": within_branches,
                          "global": 0}[hook]


def test_a_hook_anywhere_down_the_output_path_counts():
    """_hooked follows the modules whose output is the module's output: a chain's last step, a block's last conv."""
    from hrnet_fast.convert.fused import FusedChain, _hooked

    def conv(cin, cout):
        return FusedConvBNAct(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout).eval(), True, torch.float32,
                              None)

    chain = FusedChain(conv(4, 8), conv(8, 8))
    block = FusedBlock([conv(8, 8), conv(8, 8)], downsample=None)
    assert not _hooked(chain) and not _hooked(block)
    handle = chain[-1].register_forward_hook(lambda *a: None)
    assert _hooked(chain)
    handle.remove()
    chain[0].register_forward_hook(lambda *a: None)  # not on the output path: its output is consumed inside
    assert not _hooked(chain)
    block.convs[-1].register_forward_hook(lambda *a: None)
    assert _hooked(block)
