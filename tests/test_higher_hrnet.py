"""HigherHRNet (bottom-up pose) against an independent construction of the official model, written the way
HigherHRNet-Human-Pose-Estimation's ``lib/models/pose_higher_hrnet.py`` builds it (the backbone from
tests/official_hrnet.py, the heads below with the official BasicBlock and its shared ``relu``): the same keys in the
same order (the head's typed here from the official w32_512 config), the published parameter and GFLOP figures, the
same outputs, and conversion of ours and of the official-style class alike."""
import pytest
import torch
import torch.nn as nn

import hrnet_fast
from hrnet_fast.convert.pose_seg_heads import FusedDeconv
from hrnet_fast.models.higher_hrnet import PoseHigherResolutionNet
from hrnet_fast.ops.folding import fold_bn_transposed
from hrnet_fast.profile import PUBLISHED, profile
from hrnet_fast.registry import CONFIGS
from official_hrnet import BasicBlock, OfficialHRNet, extra
from tolerance import assert_model_matches

pytestmark = pytest.mark.usefixtures("one_thread")


class OfficialHigherHRNet(OfficialHRNet):
    """PoseHigherResolutionNet as the official code builds it for 17 joints, TAG_PER_JOINT, WITH_AE_LOSS (True,
    False), one deconv (kernel 4, NUM_CHANNELS = the branch-0 width, CAT_OUTPUT), ``blocks`` BasicBlocks, 1x1
    final convs. The backbone's own ``final_layer`` is an identity (no keys), so its forward returns branch 0."""

    def __init__(self, cfg, blocks=4):
        super().__init__(cfg, "pose", 1)
        self.final_layer = nn.Identity()
        width = cfg["STAGE2"]["NUM_CHANNELS"][0]
        self.final_layers = nn.ModuleList([nn.Conv2d(width, 34, 1, 1, 0), nn.Conv2d(width, 17, 1, 1, 0)])
        deconv = nn.Sequential(nn.ConvTranspose2d(width + 34, width, 4, 2, 1, 0, bias=False), nn.BatchNorm2d(width),
                               nn.ReLU(inplace=True))
        self.deconv_layers = nn.ModuleList(
            [nn.Sequential(deconv, *[nn.Sequential(BasicBlock(width, width)) for _ in range(blocks)])])

    def forward(self, x):
        x = super().forward(x)
        y = self.final_layers[0](x)
        x = self.deconv_layers[0](torch.cat((x, y), 1))
        return [y, self.final_layers[1](x)]


def official_head_keys(width=32, joints=17, blocks=4):
    """The head's (key, shape) in registration order, from the official config (not from any model)."""
    bn = lambda p, c: [(f"{p}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{p}.num_batches_tracked", ())]
    keys = [("final_layers.0.weight", (2 * joints, width, 1, 1)), ("final_layers.0.bias", (2 * joints,)),
            ("final_layers.1.weight", (joints, width, 1, 1)), ("final_layers.1.bias", (joints,)),
            ("deconv_layers.0.0.0.weight", (width + 2 * joints, width, 4, 4))]  # ConvTranspose2d: [in, out, k, k]
    keys += bn("deconv_layers.0.0.1", width)
    for k in range(1, blocks + 1):
        p = f"deconv_layers.0.{k}.0"
        keys += [(f"{p}.conv1.weight", (width, width, 3, 3))] + bn(f"{p}.bn1", width)
        keys += [(f"{p}.conv2.weight", (width, width, 3, 3))] + bn(f"{p}.bn2", width)
    return keys


def key_shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name,width", [("higher_hrnet_w32", 32), ("higher_hrnet_w48", 48)])
def test_keys_are_the_official_checkpoints(name, width):
    with torch.device("meta"):
        ours = hrnet_fast.create_model(name)
        backbone = OfficialHRNet(extra(width), "pose", 17)
    expected = [(k, s) for k, s in key_shapes(backbone) if not k.startswith("final_layer.")]
    assert key_shapes(ours) == expected + official_head_keys(width)


def test_params_and_gflops_match_the_published_figures():
    """HigherHRNet's README: 28.6 M params, 47.9 / 74.8 GFLOPs (W32 at 512 / 640), 63.8 M and 154.3 (W48 at 640).
    Its summary tool counts a transposed conv as weight size x output pixels, 4x its MACs at stride 2, computed
    here from the deconv's shapes."""
    for (name, size), (params_m, gflops, _) in PUBLISHED.items():
        if not name.startswith("higher_hrnet"):
            continue
        width = int(name[-2:])
        p = profile(name, size)
        out = (size[0] // 2) * (size[1] // 2)  # the deconv's output pixels, stride 2
        deconv_macs = (width + 34) * width * 4 * 4 * out // 4  # real: kh*kw*Cout per input pixel
        assert round(p.params / 1e6, 1) == params_m
        assert round((p.macs + 3 * deconv_macs) / 1e9, 1) == gflops


def calibrated(model, size=(64, 64)):
    torch.manual_seed(0)
    return hrnet_fast.calibrate_bn(model, size, steps=2, batch=2)


def tiny_pair():
    """The official-style construction on the small layout with calibrated BN, and ours loaded from it."""
    ref = calibrated(OfficialHigherHRNet(extra(18, "v1"), blocks=2))
    ours = PoseHigherResolutionNet(CONFIGS["hrnet_w18_small"], num_basic_blocks=2)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()


def image(*size, batch=1):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(sum(size)))


@torch.no_grad()
def test_outputs_are_the_official_list():
    ref, ours = tiny_pair()
    x = image(64, 96, batch=2)
    ys = ours(x)
    assert [tuple(y.shape) for y in ys] == [(2, 34, 16, 24), (2, 17, 32, 48)]
    for y, r in zip(ys, ref(x)):
        torch.testing.assert_close(y, r)


def test_full_size_outputs_at_512():
    with torch.device("meta"):
        ys = hrnet_fast.create_model("higher_hrnet_w32").eval()(torch.empty(1, 3, 512, 512))
    assert [tuple(y.shape) for y in ys] == [(1, 34, 128, 128), (1, 17, 256, 256)]


@pytest.mark.parametrize("groups,bias", [(1, False), (3, True)])
def test_bn_folded_into_a_transposed_conv(groups, bias):
    """Against BN applied after the transposed conv: the scale must land on the output channels (dim 1 of the
    [in, out/groups, k, k] weight, within each group)."""
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(6, 9, 4, 2, 1, groups=groups, bias=bias)
    bn = nn.BatchNorm2d(9).eval()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 5, 7)
    w, b = fold_bn_transposed(deconv, bn)
    with torch.no_grad():
        torch.testing.assert_close(nn.functional.conv_transpose2d(x, w, b, 2, 1, groups=groups), bn(deconv(x)))


@pytest.mark.parametrize("kind", ["ours", "official"])
def test_whole_model_is_fused(kind):
    ref, ours = tiny_pair()
    model = ours if kind == "ours" else ref
    fast = hrnet_fast.convert(model)
    report = fast.fusion_report()
    assert not report.unfused, str(report)
    assert_model_matches(model, fast, image(64, 96, batch=2), decision=lambda y: y.flatten(2).argmax(-1))
    patterns = {e.path: e.pattern for e in report.fused}
    assert patterns["deconv_layers.0.0"] == "deconv+bn+relu"
    assert patterns["final_layers.0"] == patterns["final_layers.1"] == "conv"
    assert sum(isinstance(m, FusedDeconv) for m in fast.modules()) == 1
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d)) for m in fast.modules())


def test_ours_and_the_official_class_convert_alike():
    ref, ours = tiny_pair()
    assert hrnet_fast.convert(ours).fusion_report().counts() == hrnet_fast.convert(ref).fusion_report().counts()
