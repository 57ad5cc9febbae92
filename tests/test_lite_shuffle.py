"""Lite-HRNet's channel shuffle in the activations' layout (hrnet_fast/convert/lite_rules.py): ``interleave``
against the model's own ``channel_shuffle(torch.cat(...))``, the converted Lite-HRNet-18 handing every conv a
channels_last map (before, the shuffle's ``.contiguous()`` made about 120 of them NCHW), and a block whose forward
is not what its children's names suggest left as it is."""
import pytest
import torch

import hrnet_fast
from hrnet_fast.convert.fused import FoldedConv, FusedConvBNAct
from hrnet_fast.convert.lite_rules import SHUFFLE, ShuffledChannelWeighting, ShuffledStem, interleave
from lite_hrnet import (LITE_HRNET_18, ConditionalChannelWeighting, LiteHRNetPose, channel_shuffle,
                        converted_lite_pair)
from tolerance import assert_model_matches

pytestmark = pytest.mark.usefixtures("one_thread")

CL = torch.channels_last


def halves(ca, cb, h, w, layout):
    g = torch.Generator().manual_seed(ca + cb + h)
    a, b = torch.randn(2, ca, h, w, generator=g), torch.randn(2, cb, h, w, generator=g)
    if layout == "nchw":
        return a, b
    wide = torch.cat([a, torch.randn_like(a)], 1).contiguous(memory_format=CL)
    return wide[:, :ca], b.contiguous(memory_format=CL)  # a: a channel half of a wider map, as chunk() gives


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("widths", [(20, 20), (16, 24)], ids=["equal", "unequal"])
def test_interleave_is_the_shuffle_of_the_concatenation_in_the_halves_layout(widths, layout):
    a, b = halves(*widths, 7, 5, layout)
    y = interleave(a, b)
    assert torch.equal(y, channel_shuffle(torch.cat([a, b], 1), 2))
    assert y.is_contiguous(memory_format=CL if layout == "channels_last" else torch.contiguous_format)


@pytest.fixture(scope="module")
def lite_pair():
    return converted_lite_pair()


def test_lite_hrnet_blocks_replaced_under_the_same_keys(lite_pair):
    model, fast = lite_pair
    inner = fast.inner.backbone
    assert isinstance(inner.stem, ShuffledStem)
    blocks = [m for m in fast.modules() if isinstance(m, ShuffledChannelWeighting)]
    assert len(blocks) == sum(isinstance(m, ConditionalChannelWeighting) for m in model.modules()) == 16
    assert {e.path for e in fast.fusion_report().fused if e.pattern == SHUFFLE} == \
        {n for n, m in model.named_modules() if type(m).__name__ in ("ConditionalChannelWeighting", "Stem")}
    assert not [e for e in fast.fusion_report().unfused if e.pattern == SHUFFLE]


def test_lite_hrnet_convs_get_channels_last_maps(lite_pair):
    """Only the stem's two channel halves (strided views of its first conv's map) reach a conv in another layout;
    before, every conv after a shuffle got an NCHW map and copied it."""
    model, fast = lite_pair
    other = []
    hooks = [m.register_forward_pre_hook(
        lambda m, args, name=name: other.append(name) if not args[0].is_contiguous(memory_format=CL) else None)
        for name, m in fast.inner.named_modules() if isinstance(m, (FusedConvBNAct, FoldedConv))]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        fast(x)
    finally:
        for h in hooks:
            h.remove()
    assert sorted(other) == ["backbone.stem.branch1.0", "backbone.stem.expand_conv"]
    assert_model_matches(model, fast, x, decision=lambda y: y.flatten(2).argmax(-1))


class _NoShuffle(ConditionalChannelWeighting):
    """The same children, but a forward that concatenates the halves without shuffling them."""

    def forward(self, x):
        halves = [s.chunk(2, dim=1) for s in x]
        x2 = self.cross_resolution_weighting([s[1] for s in halves])
        x2 = [sw(dw(s)) for s, dw, sw in zip(x2, self.depthwise_convs, self.spatial_weighting)]
        return [torch.cat([s[0], s2], dim=1) for s, s2 in zip(halves, x2)]


def test_block_whose_forward_differs_runs_as_it_is():
    torch.manual_seed(0)
    model = hrnet_fast.calibrate_bn(LiteHRNetPose(LITE_HRNET_18), (64, 64), steps=1, batch=2).eval()
    block = model.backbone.stage1[0].layers[0]
    odd = _NoShuffle([40, 80, 160], 8)
    odd.load_state_dict(block.state_dict())
    model.backbone.stage1[0].layers[0] = odd.eval()
    fast = hrnet_fast.convert(model)
    skipped = [e for e in fast.fusion_report().unfused if e.pattern == SHUFFLE]
    assert [e.path for e in skipped] == ["backbone.stage1.0.layers.0"] and "_NoShuffle" in skipped[0].detail
    assert isinstance(fast.inner.backbone.stage1[0].layers[0], _NoShuffle)
    assert_model_matches(model, fast, torch.randn(1, 3, 64, 64), decision=lambda y: y.flatten(2).argmax(-1))
