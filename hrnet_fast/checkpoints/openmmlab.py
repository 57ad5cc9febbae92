"""OpenMMLab layouts: mmpretrain/MMClassification, mmpose (1.x and 0.x) and mmsegmentation. Each wraps the
backbone as ``backbone.*`` with our names unchanged (mmcv names BN layers ``bn1``, ``bn2``…, as torchvision
does) and names the head its own way:

``mmpretrain``
    ``HRFuseScales`` neck and linear head: ``neck.0.increase_layers.*`` (our ``incre_modules``),
    ``neck.0.downsample_layers.{i}.conv|bn`` (``downsamp_modules.{i}.0|1``), ``neck.0.final_layer.conv|bn``
    (``final_layer.0|1``), ``head.fc`` (``classifier``). Head convs have no bias.
``mmpose`` (1.x)
    ``HeatmapHead`` without deconvolutions: ``head.final_layer.*`` (our ``final_layer``).
``mmpose 0.x``
    ``TopdownHeatmapSimpleHead`` with ``num_deconv_layers=0``: ``keypoint_head.final_layer.*``.
``mmpose 0.x`` HigherHRNet (bottom-up ``AssociativeEmbedding`` with ``AEHigherResolutionHead``, the
``higherhrnet_w32/w48_*`` configs, e.g. ``higher_hrnet32_coco_512x512-8ae85183_20200713.pth``)
    ``keypoint_head.final_layers.{i}`` and ``keypoint_head.deconv_layers.{i}``: the official HigherHRNet head
    with the same children (``deconv_layers.{i}.0`` = ConvTranspose2d without bias, BN, ReLU; ``.{k}.0`` a
    BasicBlock ``conv1/bn1/conv2/bn2``), so our ``final_layers``/``deconv_layers`` keys gain the prefix and
    nothing else changes. Every published config uses our defaults (``num_deconv_layers=1``,
    ``num_deconv_filters`` the branch-0 width, ``num_deconv_kernels=[4]``, ``num_basic_blocks=4``,
    ``cat_output=[True]``, ``with_ae_loss=[True, False]``, ``tag_per_joint=True``, ``final_conv_kernel=1``,
    stage 4 ending on branch 0), only ``num_joints`` varies (COCO 17, CrowdPose and AIC 14, COCO-WholeBody
    133). A checkpoint of another head layout is refused, naming the difference (``loading.py``). No state dict
    records the backbone's fusion upsampling (mmpose's ``extra.upsample``, nearest by default and in every
    HigherHRNet config; ours is nearest) or the input normalisation (mmpose 0.x's ``NormalizeTensor`` with the
    ImageNet mean/std on RGB in [0, 1], as the official repository). The UDP configs differ only in training
    targets and decoding, so their raw outputs are ours too. mmpose 1.x has no HigherHRNet head (its
    ``AssociativeEmbeddingHead`` is a ``HeatmapHead``: one conv of heatmaps and tags, under ``head.final_layer``
    like a top-down model's, which a top-down model's load flags where the outputs are twice its joints).
``mmseg``
    ``FCNHead`` (``input_transform='resize_concat'``, ``num_convs=1``, ``kernel_size=1``): its ConvModule
    ``decode_head.convs.0.conv`` (no bias) + ``decode_head.convs.0.bn`` (our ``last_layer.0/1``) and
    ``decode_head.conv_seg`` (``last_layer.3``). mmsegmentation resizes with ``align_corners=False``.
``mmseg`` OCRNet (``ocrnet_hr18/hr48``: a cascade of two decode heads)
    ``decode_head.0`` the FCNHead above (our ``aux_head``), ``decode_head.1`` the ``OCRHead``: ``bottleneck``
    ConvModule (our ``conv3x3_ocr``), ``object_context_block.query_project.{0,1}`` / ``key_project.{0,1}`` /
    ``value_project`` / ``out_project`` ConvModules (our ``f_pixel`` / ``f_object`` / ``f_down`` / ``f_up``),
    ``object_context_block.bottleneck`` (``ocr_distri_head.conv_bn_dropout``), ``conv_seg`` (``cls_head``).

A bias-free conv followed by BN is our conv-with-bias with the bias folded into the BN mean: loading sets our
bias to zero (exact), exporting folds it (exact up to fp32 rounding).
"""
from __future__ import annotations

import re
from typing import Dict, Mapping

import torch

from .base import HEAD_CONV_BIAS, RuleFormat, export, rules


class MMPretrainFormat(RuleFormat):
    name = "mmpretrain"
    head_prefixes = ("neck.0.downsample_layers.", "neck.0.final_layer.", "head.")
    incre_prefixes = ("neck.0.increase_layers.",)
    classifier_prefixes = ("head.fc.",)
    folded_biases = HEAD_CONV_BIAS
    RULES = rules([
        (r"^incre_modules\.(.*)$", r"neck.0.increase_layers.\1"),
        (HEAD_CONV_BIAS.pattern, None),
        (r"^downsamp_modules\.(\d+)\.0\.(.*)$", r"neck.0.downsample_layers.\1.conv.\2"),
        (r"^downsamp_modules\.(\d+)\.1\.(.*)$", r"neck.0.downsample_layers.\1.bn.\2"),
        (r"^final_layer\.0\.(.*)$", r"neck.0.final_layer.conv.\1"),
        (r"^final_layer\.1\.(.*)$", r"neck.0.final_layer.bn.\1"),
        (r"^classifier\.(.*)$", r"head.fc.\1"),
        (r"^(.*)$", r"backbone.\1"),
    ])


class MMPoseFormat(RuleFormat):
    task = "pose"

    def __init__(self, version: str = "1.x"):
        if version not in ("1.x", "0.x"):
            raise ValueError(f"mmpose version must be '1.x' or '0.x', got {version!r}")
        self.version = version
        head = "head" if version == "1.x" else "keypoint_head"
        self.name = "mmpose" if version == "1.x" else "mmpose 0.x"
        self.classifier_prefixes = (f"{head}.final_layer.",)
        self.RULES = rules([(r"^final_layer\.(.*)$", head + r".final_layer.\1"), (r"^(.*)$", r"backbone.\1")])


class MMPoseHigherHRNetFormat(RuleFormat):
    """mmpose 0.x HigherHRNet: ``backbone.*`` + ``keypoint_head.final_layers|deconv_layers.*`` (module
    docstring)."""

    name = "mmpose 0.x"
    task = "bottom-up pose"
    classifier_prefixes = ("keypoint_head.final_layers.",)
    RULES = rules([
        (r"^(final_layers|deconv_layers)\.(.*)$", r"keypoint_head.\1.\2"),
        (r"^(.*)$", r"backbone.\1"),
    ])


class MMSegFormat(RuleFormat):
    name = "mmseg"
    task = "segmentation"
    classifier_prefixes = ("decode_head.conv_seg.",)
    folded_biases = re.compile(r"^last_layer\.0\.bias$")
    align_corners = False
    align_corners_source = ("mmsegmentation's HRNet backbone and FCNHead resize with align_corners=False in every "
                            "HRNet config")
    RULES = rules([
        (r"^last_layer\.0\.bias$", None),
        (r"^last_layer\.0\.(.*)$", r"decode_head.convs.0.conv.\1"),
        (r"^last_layer\.1\.(.*)$", r"decode_head.convs.0.bn.\1"),
        (r"^last_layer\.3\.(.*)$", r"decode_head.conv_seg.\1"),
        (r"^(.*)$", r"backbone.\1"),
    ])


class MMSegOCRFormat(RuleFormat):
    name = "mmseg"
    task = "OCR segmentation"
    classifier_prefixes = ("decode_head.0.conv_seg.", "decode_head.1.conv_seg.")
    folded_biases = re.compile(r"^(aux_head|conv3x3_ocr)\.0\.bias$")
    align_corners = False
    align_corners_source = "mmsegmentation's OCRNet configs resize with align_corners=False"
    _BLOCK = r"ocr_distri_head\.object_context_block"
    _OCB = "decode_head.1.object_context_block"
    RULES = rules([
        (r"^(aux_head|conv3x3_ocr)\.0\.bias$", None),
        (r"^aux_head\.0\.(.*)$", r"decode_head.0.convs.0.conv.\1"),
        (r"^aux_head\.1\.(.*)$", r"decode_head.0.convs.0.bn.\1"),
        (r"^aux_head\.3\.(.*)$", r"decode_head.0.conv_seg.\1"),
        (r"^conv3x3_ocr\.0\.(.*)$", r"decode_head.1.bottleneck.conv.\1"),
        (r"^conv3x3_ocr\.1\.(.*)$", r"decode_head.1.bottleneck.bn.\1"),
        # f_pixel / f_object: conv, Sequential(BN, ReLU), conv, Sequential(BN, ReLU) -> two ConvModules.
        (_BLOCK + r"\.f_pixel\.0\.(.*)$", _OCB + r".query_project.0.conv.\1"),
        (_BLOCK + r"\.f_pixel\.1\.0\.(.*)$", _OCB + r".query_project.0.bn.\1"),
        (_BLOCK + r"\.f_pixel\.2\.(.*)$", _OCB + r".query_project.1.conv.\1"),
        (_BLOCK + r"\.f_pixel\.3\.0\.(.*)$", _OCB + r".query_project.1.bn.\1"),
        (_BLOCK + r"\.f_object\.0\.(.*)$", _OCB + r".key_project.0.conv.\1"),
        (_BLOCK + r"\.f_object\.1\.0\.(.*)$", _OCB + r".key_project.0.bn.\1"),
        (_BLOCK + r"\.f_object\.2\.(.*)$", _OCB + r".key_project.1.conv.\1"),
        (_BLOCK + r"\.f_object\.3\.0\.(.*)$", _OCB + r".key_project.1.bn.\1"),
        # f_down / f_up: one ConvModule each (not in a Sequential).
        (_BLOCK + r"\.f_down\.0\.(.*)$", _OCB + r".value_project.conv.\1"),
        (_BLOCK + r"\.f_down\.1\.0\.(.*)$", _OCB + r".value_project.bn.\1"),
        (_BLOCK + r"\.f_up\.0\.(.*)$", _OCB + r".out_project.conv.\1"),
        (_BLOCK + r"\.f_up\.1\.0\.(.*)$", _OCB + r".out_project.bn.\1"),
        (r"^ocr_distri_head\.conv_bn_dropout\.0\.(.*)$", _OCB + r".bottleneck.conv.\1"),
        (r"^ocr_distri_head\.conv_bn_dropout\.1\.0\.(.*)$", _OCB + r".bottleneck.bn.\1"),
        (r"^cls_head\.(.*)$", r"decode_head.1.conv_seg.\1"),
        (r"^(.*)$", r"backbone.\1"),
    ])


def to_mmpretrain(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our (timm) classification state dict in mmpretrain's names: ``torch.save({"state_dict":
    to_mmpretrain(sd)}, path)`` writes a checkpoint mmpretrain's ``HRNet`` + ``HRFuseScales`` + ``LinearClsHead``
    model loads. Head-conv biases are folded into BN (module docstring)."""
    return export(state_dict, MMPretrainFormat())


def to_mmpose(state_dict: Mapping[str, torch.Tensor], version: str = "1.x") -> Dict[str, torch.Tensor]:
    """Our pose state dict in mmpose's names (``head.final_layer`` in 1.x, ``keypoint_head.final_layer`` in
    0.x): ``torch.save({"state_dict": to_mmpose(sd)}, path)``. A HigherHRNet state dict is refused: its
    exporter is :func:`to_mmpose_higher_hrnet`."""
    if any(k.startswith(("final_layers.", "deconv_layers.")) for k in state_dict):
        raise ValueError("this is a HigherHRNet (bottom-up pose) state dict, which to_mmpose would export as a "
                         "backbone with stray head entries; use to_mmpose_higher_hrnet (mmpose 0.x's "
                         "AEHigherResolutionHead; mmpose 1.x has no HigherHRNet head)")
    return export(state_dict, MMPoseFormat(version))


def to_mmpose_higher_hrnet(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our HigherHRNet state dict (``higher_hrnet_w32``/``w48``) in mmpose 0.x's names (``backbone.*``,
    ``keypoint_head.final_layers.*``, ``keypoint_head.deconv_layers.*``; module docstring), values unchanged:
    ``torch.save({"state_dict": to_mmpose_higher_hrnet(sd)}, path)`` writes what mmpose 0.x's
    ``AssociativeEmbedding`` with an ``AEHigherResolutionHead`` loads, and ``load_checkpoint`` reads back
    exactly. Only the official head layout is exported: a state dict without ``final_layers`` is refused."""
    if not any(k.startswith("final_layers.") for k in state_dict):
        raise ValueError("not a HigherHRNet state dict (no final_layers.* entries): to_mmpose_higher_hrnet exports "
                         "higher_hrnet_w32/w48 (PoseHigherResolutionNet) state dicts; a top-down pose model's is "
                         "exported by to_mmpose")
    return export(state_dict, MMPoseHigherHRNetFormat())


def to_mmseg_ocr(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our HRNetV2 + OCR state dict in mmsegmentation's OCRNet names (``decode_head.0`` FCNHead,
    ``decode_head.1`` OCRHead); the biases of ``aux_head.0`` and ``conv3x3_ocr.0`` are folded into their BNs'
    running means, as mmsegmentation's ConvModules have no conv bias."""
    return export(state_dict, MMSegOCRFormat())


def to_mmseg(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our segmentation state dict in mmsegmentation's names (``FCNHead``); ``last_layer.0``'s bias is folded
    into the BN's running mean, as mmsegmentation's ConvModule has no conv bias."""
    return export(state_dict, MMSegFormat())
