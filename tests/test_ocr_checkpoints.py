"""mmsegmentation's OCRNet checkpoints (``ocrnet_hr18/hr48``) into HRNetV2 + OCR. The expected names are typed from
the mmsegmentation sources (a cascade of ``FCNHead`` with one ConvModule and ``OCRHead``: ``bottleneck``,
``object_context_block`` a ``SelfAttentionBlock`` whose ``key_project``/``query_project`` are Sequentials of two
ConvModules and ``value_project``/``out_project`` single ConvModules, its own ``bottleneck``, ``conv_seg``;
ConvModules with BN have no conv bias), and the checkpoint is built by the test's own renaming, so a wrong mapping
fails them."""
import pytest
import torch

import hrnet_fast
from hrnet_fast import load_checkpoint
from hrnet_fast.checkpoints import CheckpointError, to_mmseg_ocr
from hrnet_fast.models.ocr import SegHRNetOCR
from hrnet_fast.registry import CONFIGS
from tolerance import rel_err

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCK = "ocr_distri_head.object_context_block"
# Our module prefix -> mmsegmentation's (ConvModule ``conv``/``bn`` children named after it).
HEAD = {
    "aux_head.0": "decode_head.0.convs.0.conv", "aux_head.1": "decode_head.0.convs.0.bn",
    "aux_head.3": "decode_head.0.conv_seg",
    "conv3x3_ocr.0": "decode_head.1.bottleneck.conv", "conv3x3_ocr.1": "decode_head.1.bottleneck.bn",
    **{f"{BLOCK}.{ours}.{i}{'.0' if part == 'bn' else ''}":
       f"decode_head.1.object_context_block.{theirs}.{i // 2}.{part}"
       for ours, theirs in (("f_pixel", "query_project"), ("f_object", "key_project"))
       for i, part in ((0, "conv"), (1, "bn"), (2, "conv"), (3, "bn"))},
    **{f"{BLOCK}.{ours}.{i}{'.0' if part == 'bn' else ''}": f"decode_head.1.object_context_block.{theirs}.{part}"
       for ours, theirs in (("f_down", "value_project"), ("f_up", "out_project"))
       for i, part in ((0, "conv"), (1, "bn"))},
    "ocr_distri_head.conv_bn_dropout.0": "decode_head.1.object_context_block.bottleneck.conv",
    "ocr_distri_head.conv_bn_dropout.1.0": "decode_head.1.object_context_block.bottleneck.bn",
    "cls_head": "decode_head.1.conv_seg",
}
BIASED = ("aux_head", "conv3x3_ocr")  # our convs with a bias before a BN: mmsegmentation's have none


def mmseg_by_hand(sd):
    """Our state dict in mmsegmentation's names, the head conv biases folded into the BN means."""
    out = {}
    for key, value in sd.items():
        module, _, name = key.rpartition(".")
        if module in (f"{b}.0" for b in BIASED) and name == "bias":
            continue
        if module in (f"{b}.1" for b in BIASED) and name == "running_mean":
            value = value - sd[f"{module[:-2]}.0.bias"]
        out[f"{HEAD[module]}.{name}" if module in HEAD else f"backbone.{key}"] = value
    return out


def tiny(align_corners=False):
    return SegHRNetOCR(CONFIGS["hrnet_w18_small"], mid_channels=32, key_channels=16, align_corners=align_corners)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = tiny()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)  # the folded biases must matter
    return hrnet_fast.calibrate_bn(model, (64, 64), steps=1, batch=2).eval()


def test_export_is_mmsegmentations_layout(trained):
    sd = trained.state_dict()
    exported, expected = to_mmseg_ocr(sd), mmseg_by_hand(sd)
    assert sorted(exported) == sorted(expected)
    for k in expected:
        torch.testing.assert_close(exported[k], expected[k], rtol=0, atol=0, msg=k)


def test_mmseg_ocrnet_round_trip(trained, tmp_path):
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": mmseg_by_hand(trained.state_dict())},
               tmp_path / "ocrnet_hr18.pth")
    fresh = tiny()
    assert load_checkpoint(fresh, tmp_path / "ocrnet_hr18.pth").format == "mmseg"
    assert torch.count_nonzero(fresh.aux_head[0].bias) == 0 and torch.count_nonzero(fresh.conv3x3_ocr[0].bias) == 0
    x = torch.randn(1, 3, 72, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for y, ref in zip(fresh.eval()(x), trained(x)):
            assert rel_err(y, ref) <= 1e-5  # the bias moved into the BN mean: fp32 rounding only


def test_mmseg_ocrnet_into_an_align_corners_model_is_refused(trained):
    with pytest.raises(CheckpointError, match="trained with align_corners=False .*OCRNet"):
        load_checkpoint(tiny(align_corners=True), mmseg_by_hand(trained.state_dict()))


def test_mmseg_ocrnet_and_fcn_checkpoints_are_told_apart(trained):
    ocr = mmseg_by_hand(trained.state_dict())
    with pytest.raises(CheckpointError, match="is an OCR segmentation checkpoint .*mmseg format"):
        load_checkpoint(hrnet_fast.models.SegHighResolutionNet(CONFIGS["hrnet_w18_small"], align_corners=False), ocr)
    fcn = hrnet_fast.to_mmseg(hrnet_fast.models.SegHighResolutionNet(CONFIGS["hrnet_w18_small"]).state_dict())
    with pytest.raises(CheckpointError, match="is a segmentation checkpoint .*mmseg format"):
        load_checkpoint(tiny(), fcn)
