"""convert() and load_checkpoint() over OpenMMLab's own classes, built through each package's registry from configs
typed here after the packages' own: mmpretrain ``configs/_base_/models/hrnet/hrnet-w18.py``, mmsegmentation
``configs/_base_/models/fcn_hr18.py``, mmpose ``td-hm_hrnet-w32_8xb64-210e_coco-256x192.py`` (losses, codecs and
data preprocessors as there; no pretrained weights). The equivalents in mmpretrain_layout.py, mmseg_hrnet.py and
lite_hrnet.py test the same structures without the packages; these tests run the real classes where the package
imports.

mmengine, mmcv-lite and mmpretrain are in the ``test`` extra. mmsegmentation 1.2.2 and mmpose 1.3.2 install from
PyPI next to them but do not import, so they are not in it: mmsegmentation asserts mmcv < 2.2.0, and with mmcv-lite
2.1.0 it needs ``ftfy`` and then the compiled ``mmcv._ext`` that mmcv-lite lacks; mmpose's xtcocotools wheel is
built against numpy 1, and past that ``mmpose.models`` needs mmdet, whose 3.3.0 asserts mmcv < 2.2.0 too. A package
that is not installed, or whose import fails, skips its tests with the reason (package, version and the error's
first line); anything failing after the import fails the test.

Each model gets random BN affine parameters and biases, and BN statistics calibrated on random images, so the fused
BN folding and the checkpoint mapping are checked on values that are not 1/0.
"""
import importlib
import importlib.metadata

import pytest
import torch
import torch.nn as nn

import hrnet_fast
from hrnet_fast.convert.fused import FoldedConv, FusedConvBNAct
from hrnet_fast.ops.folding import is_batchnorm
from tolerance import assert_model_matches

pytestmark = pytest.mark.usefixtures("one_thread")


def import_or_skip(dist: str, module: str) -> str:
    """Imports ``module`` of the installed distribution ``dist`` and returns ``dist``'s version; skips the test when
    ``dist`` is not installed or the import raises, with the distribution, its version and the error's first line
    as the reason."""
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed")
    try:
        importlib.import_module(module)
    except Exception as e:  # whatever the package raises while importing (AssertionError, ValueError, ImportError)
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        pytest.skip(f"{dist} {version} does not import here: {type(e).__name__}: {first}")
    return version


def build(scope: str, cfg: dict) -> nn.Module:
    """``cfg`` built by the ``MODELS`` registry of the package ``scope``, with that package as mmengine's default
    scope for the duration (as its own tools build models), so nested ``type`` names resolve in that package."""
    from mmengine.registry import DefaultScope
    registry = importlib.import_module(f"{scope}.registry")
    with DefaultScope.overwrite_default_scope(scope):
        return registry.MODELS.build(cfg)


def randomise(model: nn.Module, size) -> nn.Module:
    """BN scales around 1, BN shifts and conv/linear biases around 0, BN statistics from random images; eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            for name, p in m.named_parameters(recurse=False):
                if p.dim() == 1:
                    p.normal_(1.0 if is_batchnorm(m) and name == "weight" else 0.0, 0.1)
    return hrnet_fast.calibrate_bn(model, size, steps=2, batch=2)


def image(*size, batch=2):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(sum(size)))


def unfused_convs_and_bns(fast: nn.Module):
    """Convs outside the fused modules and BNs anywhere in the converted model."""
    fused = [f"{name}." for name, m in fast.named_modules() if isinstance(m, (FusedConvBNAct, FoldedConv))]
    return [name for name, m in fast.named_modules()
            if is_batchnorm(m) or (isinstance(m, nn.Conv2d) and not any(name.startswith(p) for p in fused))]


def left_as_is(fast: nn.Module):
    return {(e.path, e.pattern) for e in fast.fusion_report().unfused}


def hr_fuses(model: nn.Module) -> int:
    """Fused outputs the model's HR modules compute: one per fuse layer row."""
    return sum(len(m.fuse_layers) for m in model.modules() if getattr(m, "fuse_layers", None) is not None)


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def pixel_classes(y):
    return y.argmax(1)


def heatmap_peaks(y):
    return y.flatten(2).argmax(-1)


# ------------------------------------------------------------------------------------------------ mmpretrain

MMPRETRAIN_HRNET_W18 = dict(
    type="ImageClassifier",
    backbone=dict(type="HRNet", arch="w18"),
    neck=[
        dict(type="HRFuseScales", in_channels=(18, 36, 72, 144)),
        dict(type="GlobalAveragePooling"),
    ],
    head=dict(
        type="LinearClsHead",
        in_channels=2048,
        num_classes=1000,
        loss=dict(type="CrossEntropyLoss", loss_weight=1.0),
        topk=(1, 5),
    ))
CLS_SIZE = (64, 64)


@pytest.fixture(scope="module")
def mmpretrain_hrnet():
    version = import_or_skip("mmpretrain", "mmpretrain.models")
    model = randomise(build("mmpretrain", MMPRETRAIN_HRNET_W18), CLS_SIZE)
    assert type(model).__module__.startswith("mmpretrain.") and type(model).__name__ == "ImageClassifier"
    return version, model


def test_mmpretrain_hrnet_w18_is_fused_whole_and_matches(mmpretrain_hrnet):
    _, model = mmpretrain_hrnet
    fast = hrnet_fast.convert(model)
    report = fast.fusion_report()
    assert not unfused_convs_and_bns(fast), str(report)
    # What has no fused op: the classifier's pooling and linear layer, and the training-only parts it carries.
    assert left_as_is(fast) == {("data_preprocessor", "ClsDataPreprocessor"), ("neck.1.gap", "AdaptiveAvgPool2d"),
                                ("head.fc", "Linear"), ("head.loss_module", "CrossEntropyLoss")}, str(report)
    assert report.counts()["hr fuse"] == hr_fuses(model.backbone) == 26
    assert_model_matches(model, fast, image(*CLS_SIZE))


def test_mmpretrain_checkpoint_of_the_real_model_loads_into_hrnet_w18(mmpretrain_hrnet, tmp_path):
    version, model = mmpretrain_hrnet
    path = tmp_path / "hrnet-w18_mmpretrain.pth"
    torch.save({"meta": {"mmpretrain_version": version, "epoch": 100},
                "state_dict": model.state_dict()}, path)
    ours = hrnet_fast.create_model("hrnet_w18")
    report = hrnet_fast.load_checkpoint(ours, path)
    assert report.format == "mmpretrain"
    assert not (report.missing_keys or report.unexpected_keys or report.mismatched_keys), report
    x = image(*CLS_SIZE)
    torch.testing.assert_close(outputs(ours, x), outputs(model, x))


# ------------------------------------------------------------------------------------------------ mmsegmentation

SYNC_BN = dict(type="SyncBN", requires_grad=True)
MMSEG_FCN_HR18 = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(
        type="SegDataPreProcessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255),
    backbone=dict(
        type="HRNet",
        norm_cfg=SYNC_BN,
        norm_eval=False,
        extra=dict(
            stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(4,), num_channels=(64,)),
            stage2=dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(4, 4), num_channels=(18, 36)),
            stage3=dict(num_modules=4, num_branches=3, block="BASIC", num_blocks=(4, 4, 4),
                        num_channels=(18, 36, 72)),
            stage4=dict(num_modules=3, num_branches=4, block="BASIC", num_blocks=(4, 4, 4, 4),
                        num_channels=(18, 36, 72, 144)))),
    decode_head=dict(
        type="FCNHead",
        in_channels=[18, 36, 72, 144],
        in_index=(0, 1, 2, 3),
        channels=sum([18, 36, 72, 144]),
        input_transform="resize_concat",
        kernel_size=1,
        num_convs=1,
        concat_input=False,
        dropout_ratio=-1,
        num_classes=19,
        norm_cfg=SYNC_BN,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"))
SEG_SIZE = (64, 96)


@pytest.fixture(scope="module")
def mmseg_fcn_hr18():
    version = import_or_skip("mmsegmentation", "mmseg.models")
    model = randomise(build("mmseg", MMSEG_FCN_HR18), SEG_SIZE)
    assert type(model).__module__.startswith("mmseg.") and type(model).__name__ == "EncoderDecoder"
    return version, model


def test_mmseg_fcn_hr18_is_fused_whole_and_matches(mmseg_fcn_hr18):
    _, model = mmseg_fcn_hr18
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    fast = hrnet_fast.convert(model)
    report = fast.fusion_report()
    assert not unfused_convs_and_bns(fast), str(report)
    assert [e.path for e in report.fused if e.pattern == "segmentation head"] == ["decode_head"], str(report)
    assert report.counts()["hr fuse"] == hr_fuses(model.backbone), str(report)
    (y,) = assert_model_matches(model, fast, image(*SEG_SIZE), decision=pixel_classes)
    assert y.shape == (2, 19, SEG_SIZE[0] // 4, SEG_SIZE[1] // 4)


def test_mmseg_checkpoint_of_the_real_model_loads_into_seg_hrnetv2_w18(mmseg_fcn_hr18, tmp_path):
    version, model = mmseg_fcn_hr18
    path = tmp_path / "fcn_hr18_mmseg.pth"
    torch.save({"meta": {"mmseg_version": version}, "state_dict": model.state_dict()}, path)
    ours = hrnet_fast.create_model("seg_hrnetv2_w18", num_classes=19, align_corners=False)
    report = hrnet_fast.load_checkpoint(ours, path)
    assert report.format == "mmseg"
    assert not (report.missing_keys or report.unexpected_keys or report.mismatched_keys), report
    x = image(*SEG_SIZE)
    torch.testing.assert_close(outputs(ours, x), outputs(model, x))


# ------------------------------------------------------------------------------------------------ mmpose

MMPOSE_TD_HM_HRNET_W32 = dict(
    type="TopdownPoseEstimator",
    data_preprocessor=dict(
        type="PoseDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True),
    backbone=dict(
        type="HRNet",
        in_channels=3,
        extra=dict(
            stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(4,), num_channels=(64,)),
            stage2=dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(4, 4), num_channels=(32, 64)),
            stage3=dict(num_modules=4, num_branches=3, block="BASIC", num_blocks=(4, 4, 4),
                        num_channels=(32, 64, 128)),
            stage4=dict(num_modules=3, num_branches=4, block="BASIC", num_blocks=(4, 4, 4, 4),
                        num_channels=(32, 64, 128, 256)))),
    head=dict(
        type="HeatmapHead",
        in_channels=32,
        out_channels=17,
        deconv_out_channels=None,
        loss=dict(type="KeypointMSELoss", use_target_weight=True),
        decoder=dict(type="MSRAHeatmap", input_size=(192, 256), heatmap_size=(48, 64), sigma=2)),
    test_cfg=dict(flip_test=True, flip_mode="heatmap", shift_heatmap=True))
POSE_SIZE = (96, 64)  # the config's 256x192 aspect, small


class TensorMode(nn.Module):
    """mmpose's estimator called as its tensor mode is: its ``forward(inputs, data_samples, mode='tensor')`` has no
    default for ``data_samples``, so ``estimator(x)`` alone raises."""

    def __init__(self, estimator: nn.Module):
        super().__init__()
        self.estimator = estimator

    def forward(self, x):
        return self.estimator(x, None)


@pytest.fixture(scope="module")
def mmpose_hrnet_w32():
    version = import_or_skip("mmpose", "mmpose.models")
    model = build("mmpose", MMPOSE_TD_HM_HRNET_W32)
    assert type(model).__module__.startswith("mmpose.") and type(model).__name__ == "TopdownPoseEstimator"
    randomise(TensorMode(model), POSE_SIZE)  # calibrates the estimator's own BNs, in place
    return version, model, hrnet_fast.convert(model)


def test_mmpose_td_hm_hrnet_w32_is_fused_whole_and_matches(mmpose_hrnet_w32):
    """The estimator converted as it is; its fused modules run through the estimator's own tensor mode."""
    _, model, fast = mmpose_hrnet_w32
    report = fast.fusion_report()
    assert not unfused_convs_and_bns(fast), str(report)
    assert left_as_is(fast) == {("data_preprocessor", "PoseDataPreprocessor")}, str(report)
    assert report.counts()["hr fuse"] == hr_fuses(model.backbone), str(report)  # the last stage fuses one output
    (y,) = assert_model_matches(TensorMode(model), lambda x: fast.inner(x, None), image(*POSE_SIZE),
                                decision=heatmap_peaks)
    assert y.shape == (2, 17, POSE_SIZE[0] // 4, POSE_SIZE[1] // 4)


def test_mmpose_converted_estimator_is_called_as_the_estimator_is(mmpose_hrnet_w32):
    """The converted estimator takes what the estimator takes: ``fast(inputs, data_samples, mode)``."""
    _, model, fast = mmpose_hrnet_w32
    assert_model_matches(TensorMode(model), lambda x: fast(x, None), image(*POSE_SIZE), decision=heatmap_peaks)
    assert_model_matches(TensorMode(model), lambda x: fast(x, None, mode="tensor"), image(*POSE_SIZE),
                         decision=heatmap_peaks)


def test_mmpose_checkpoint_of_the_real_model_loads_into_pose_hrnet_w32(mmpose_hrnet_w32, tmp_path):
    version, model, _ = mmpose_hrnet_w32
    path = tmp_path / "td-hm_hrnet-w32_mmpose.pth"
    torch.save({"meta": {"mmpose_version": version}, "state_dict": model.state_dict()}, path)
    ours = hrnet_fast.create_model("pose_hrnet_w32")
    report = hrnet_fast.load_checkpoint(ours, path)
    assert report.format == "mmpose"
    assert not (report.missing_keys or report.unexpected_keys or report.mismatched_keys), report
    x = image(*POSE_SIZE)
    torch.testing.assert_close(outputs(ours, x), outputs(TensorMode(model), x))
