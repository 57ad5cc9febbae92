"""HRNetV2 + OCR against an independent construction of the official model, written the way the HRNet-OCR branch
of HRNet-Semantic-Segmentation (``lib/models/seg_hrnet_ocr.py``) builds it: SyncBatchNorm everywhere in the head,
``BNReLU`` as ``Sequential(BN, ReLU)``, ``.view``-based attention, the pooling module of its attention block, the
resize and concatenation in the forward. Same keys in the same order (the head's typed here from the official
config: MID_CHANNELS 512, KEY_CHANNELS 256), the same [aux, out] outputs, and conversion of both classes."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hrnet_fast
from hrnet_fast.models.ocr import SegHRNetOCR
from hrnet_fast.registry import CONFIGS
from official_hrnet import OfficialHRNet, extra
from tolerance import assert_model_matches

pytestmark = pytest.mark.usefixtures("one_thread")


def bn_relu(c):
    return nn.Sequential(nn.SyncBatchNorm(c), nn.ReLU())


class Gather(nn.Module):
    def __init__(self, cls_num):
        super().__init__()
        self.cls_num, self.scale = cls_num, 1

    def forward(self, feats, probs):
        b, k = probs.size(0), probs.size(1)
        probs = F.softmax(self.scale * probs.view(b, k, -1), dim=2)
        feats = feats.view(b, feats.size(1), -1).permute(0, 2, 1)
        return torch.matmul(probs, feats).permute(0, 2, 1).unsqueeze(3)


class Attention(nn.Module):
    def __init__(self, cin, ck):
        super().__init__()
        self.scale, self.in_channels, self.key_channels = 1, cin, ck
        self.pool = nn.MaxPool2d(kernel_size=(1, 1))
        conv = lambda a, b: nn.Conv2d(a, b, 1, 1, 0, bias=False)
        self.f_pixel = nn.Sequential(conv(cin, ck), bn_relu(ck), conv(ck, ck), bn_relu(ck))
        self.f_object = nn.Sequential(conv(cin, ck), bn_relu(ck), conv(ck, ck), bn_relu(ck))
        self.f_down = nn.Sequential(conv(cin, ck), bn_relu(ck))
        self.f_up = nn.Sequential(conv(ck, cin), bn_relu(cin))

    def forward(self, x, proxy):
        b = x.size(0)
        query = self.f_pixel(x).view(b, self.key_channels, -1).permute(0, 2, 1)
        key = self.f_object(proxy).view(b, self.key_channels, -1)
        value = self.f_down(proxy).view(b, self.key_channels, -1).permute(0, 2, 1)
        sim = F.softmax((self.key_channels ** -.5) * torch.matmul(query, key), dim=-1)
        context = torch.matmul(sim, value).permute(0, 2, 1).contiguous().view(b, self.key_channels, *x.size()[2:])
        return self.f_up(context)


class DistributionHead(nn.Module):
    def __init__(self, cin, ck, cout):
        super().__init__()
        self.object_context_block = Attention(cin, ck)
        self.conv_bn_dropout = nn.Sequential(nn.Conv2d(2 * cin, cout, 1, padding=0, bias=False), bn_relu(cout),
                                             nn.Dropout2d(0.05))

    def forward(self, feats, proxy):
        return self.conv_bn_dropout(torch.cat([self.object_context_block(feats, proxy), feats], 1))


class OfficialOCR(OfficialHRNet):
    """seg_hrnet_ocr's HighResolutionNet: the backbone's ``last_layer`` is an identity (no keys), so its forward
    returns the concatenated branches, which the OCR head reads as the official forward does."""

    def __init__(self, cfg, classes=19, mid=512, key=256, align_corners=True):
        super().__init__(cfg, "segmentation", classes, align_corners=align_corners)
        self.last_layer = nn.Identity()
        width = sum(c for c in cfg["STAGE4"]["NUM_CHANNELS"])
        self.conv3x3_ocr = nn.Sequential(nn.Conv2d(width, mid, 3, 1, 1), nn.SyncBatchNorm(mid), nn.ReLU(True))
        self.ocr_gather_head = Gather(classes)
        self.ocr_distri_head = DistributionHead(mid, key, mid)
        self.cls_head = nn.Conv2d(mid, classes, 1, 1, 0, bias=True)
        self.aux_head = nn.Sequential(nn.Conv2d(width, width, 1, 1, 0), nn.SyncBatchNorm(width), nn.ReLU(True),
                                      nn.Conv2d(width, classes, 1, 1, 0, bias=True))

    def forward(self, x):
        feats = super().forward(x)
        aux = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        feats = self.ocr_distri_head(feats, self.ocr_gather_head(feats, aux))
        return [aux, self.cls_head(feats)]


def official_head_keys(width=720, mid=512, key=256, classes=19):
    """The head's (key, shape) in the official registration order, from the config (not from any model)."""
    bn = lambda p, c: [(f"{p}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{p}.num_batches_tracked", ())]
    keys = [("conv3x3_ocr.0.weight", (mid, width, 3, 3)), ("conv3x3_ocr.0.bias", (mid,))] + bn("conv3x3_ocr.1", mid)
    block = "ocr_distri_head.object_context_block"
    for stack in ("f_pixel", "f_object"):
        keys += [(f"{block}.{stack}.0.weight", (key, mid, 1, 1))] + bn(f"{block}.{stack}.1.0", key)
        keys += [(f"{block}.{stack}.2.weight", (key, key, 1, 1))] + bn(f"{block}.{stack}.3.0", key)
    keys += [(f"{block}.f_down.0.weight", (key, mid, 1, 1))] + bn(f"{block}.f_down.1.0", key)
    keys += [(f"{block}.f_up.0.weight", (mid, key, 1, 1))] + bn(f"{block}.f_up.1.0", mid)
    keys += [("ocr_distri_head.conv_bn_dropout.0.weight", (mid, 2 * mid, 1, 1))] + bn(
        "ocr_distri_head.conv_bn_dropout.1.0", mid)
    keys += [("cls_head.weight", (classes, mid, 1, 1)), ("cls_head.bias", (classes,))]
    keys += [("aux_head.0.weight", (width, width, 1, 1)), ("aux_head.0.bias", (width,))] + bn("aux_head.1", width)
    keys += [("aux_head.3.weight", (classes, width, 1, 1)), ("aux_head.3.bias", (classes,))]
    return keys


def key_shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_keys_are_the_official_checkpoints():
    with torch.device("meta"):
        ours = hrnet_fast.create_model("seg_hrnetv2_w48_ocr")
        backbone = OfficialHRNet(extra(48), "segmentation", 19)
    expected = [(k, s) for k, s in key_shapes(backbone) if not k.startswith("last_layer.")]
    assert key_shapes(ours) == expected + official_head_keys()


def test_params_are_the_hrnetv2_backbone_and_the_ocr_head():
    """No params figure is published for HRNetV2-W48 + OCR (the HRNet-OCR README and the OCR paper list none):
    the backbone is HRNetV2-W48's (65.9 M published, less its 720-wide last_layer), the head counted by hand."""
    with torch.device("meta"):
        ours = hrnet_fast.create_model("seg_hrnetv2_w48_ocr")
        seg = hrnet_fast.create_model("seg_hrnetv2_w48")
    w, m, k, c = 720, 512, 256, 19
    last_layer = w * w + w + 2 * w + c * w + c
    head = (m * w * 9 + m + 2 * m) + 2 * (k * m + 2 * k + k * k + 2 * k) + (k * m + 2 * k) + (m * k + 2 * m) \
        + (m * 2 * m + 2 * m) + (c * m + c) + (w * w + w + 2 * w + c * w + c)
    params = sum(p.numel() for p in ours.parameters())
    assert params == sum(p.numel() for p in seg.parameters()) - last_layer + head
    assert round(params / 1e6, 2) == 70.37


def calibrated(model, size=(64, 64)):
    torch.manual_seed(0)
    return hrnet_fast.calibrate_bn(model, size, steps=2, batch=2)


def tiny_pair(align_corners=True):
    """The official-style construction on the small layout (narrow OCR head) with calibrated BN, and ours loaded
    from it."""
    ref = calibrated(OfficialOCR(extra(18, "v1"), mid=32, key=16, align_corners=align_corners))
    ours = SegHRNetOCR(CONFIGS["hrnet_w18_small"], mid_channels=32, key_channels=16, align_corners=align_corners)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()


def image(*size, batch=1):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(sum(size)))


def pixel_classes(y):
    return y.argmax(1)


@torch.no_grad()
@pytest.mark.parametrize("align_corners", [True, False])
def test_outputs_are_the_official_pair(align_corners):
    ref, ours = tiny_pair(align_corners)
    x = image(72, 40, batch=2)  # branches of 18x10, 9x5, 5x3, 3x2: every resize interpolates
    ys = ours(x)
    assert [tuple(y.shape) for y in ys] == [(2, 19, 18, 10)] * 2
    for y, r in zip(ys, ref(x)):
        torch.testing.assert_close(y, r)


def test_defaults():
    with torch.device("meta"):
        model = hrnet_fast.create_model("seg_hrnet_ocr_w48")
        assert model.align_corners is True  # MODEL.ALIGN_CORNERS' default, which no OCR config changes
        assert hrnet_fast.create_model("seg_hrnetv2_w48_ocr", num_classes=59, align_corners=False).cls_head \
            .out_channels == 59
        assert model.pretrained_cfg["input_size"] == (3, 1024, 2048)


# What convert() leaves as torch ops, by design: the attention's matmuls and softmax, the gather head, and (ours) the
# branches' resize before the concatenation (the official forward does it in its forward, not in a module).
LEFT = {"ocr_distri_head.object_context_block": "object attention", "ocr_gather_head": "SpatialGather",
        "head_resize": "BilinearResize"}


@pytest.mark.parametrize("kind", ["ours", "official"])
def test_every_conv_is_fused(kind):
    ref, ours = tiny_pair(align_corners=False)
    model = ours if kind == "ours" else ref
    fast = hrnet_fast.convert(model)
    report = fast.fusion_report()
    left = {e.path: e.pattern for e in report.unfused}
    expected = dict(LEFT) if kind == "ours" else {**{k: v for k, v in LEFT.items() if k != "head_resize"},
                                                  "ocr_gather_head": "Gather"}
    assert left == expected, str(report)
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.SyncBatchNorm)) for m in fast.modules())
    patterns = {e.path: e.pattern for e in report.fused}
    for stack, n in (("f_pixel", 2), ("f_object", 2), ("f_down", 1), ("f_up", 1)):
        for i in range(n):
            assert patterns[f"ocr_distri_head.object_context_block.{stack}.{2 * i}"] == "conv+bn+relu"
    assert patterns["ocr_distri_head.conv_bn_dropout.0"] == "conv+bn+relu"
    assert patterns["conv3x3_ocr"] == "conv+bn+relu" and patterns["cls_head"] == "conv"
    assert_model_matches(model, fast, image(72, 40, batch=2), decision=pixel_classes)
