"""Model names, their stage layouts, and ``create_model``.

The layouts are the published HRNet-Image-Classification configs (also timm's ``cfg_cls``): a Bottleneck
stage 1 and BasicBlock stages 2-4 with branch widths C, 2C, 4C, 8C. The pose models
(deep-high-resolution-net.pytorch's ``w32/w48`` experiments) and the HRNetV2 segmentation models
(HRNet-Semantic-Segmentation's ``seg_hrnet_w18/w32/w48`` and ``w18_small_v1/v2``) use the same layouts.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn

from .models import HighResolutionNet, PoseHighResolutionNet, SegHighResolutionNet
from .models.higher_hrnet import PoseHigherResolutionNet
from .models.ocr import SegHRNetOCR
from .pretrained import default_cfg, load_pretrained, set_cfg


def _stage(modules: int, blocks: Sequence[int], channels: Sequence[int], block: str = "BASIC") -> Dict:
    return dict(num_modules=modules, num_branches=len(channels), block_type=block,
                num_blocks=tuple(blocks), num_channels=tuple(channels))


def full_config(width: int) -> Dict:
    """W18…W64: stage modules 1/1/4/3, four blocks per branch, branch widths C·(1, 2, 4, 8)."""
    c = [width * 2 ** i for i in range(4)]
    return dict(stem_width=64,
                stage1=_stage(1, (4,), (64,), "BOTTLENECK"),
                stage2=_stage(1, (4, 4), c[:2]),
                stage3=_stage(4, (4, 4, 4), c[:3]),
                stage4=_stage(3, (4, 4, 4, 4), c))


CONFIGS: Dict[str, Dict] = {
    "hrnet_w18_small": dict(stem_width=64,
                            stage1=_stage(1, (1,), (32,), "BOTTLENECK"),
                            stage2=_stage(1, (2, 2), (16, 32)),
                            stage3=_stage(1, (2, 2, 2), (16, 32, 64)),
                            stage4=_stage(1, (2, 2, 2, 2), (16, 32, 64, 128))),
    "hrnet_w18_small_v2": dict(stem_width=64,
                               stage1=_stage(1, (2,), (64,), "BOTTLENECK"),
                               stage2=_stage(1, (2, 2), (18, 36)),
                               stage3=_stage(3, (2, 2, 2), (18, 36, 72)),
                               stage4=_stage(2, (2, 2, 2, 2), (18, 36, 72, 144))),
    **{f"hrnet_w{w}": full_config(w) for w in (18, 30, 32, 40, 44, 48, 64)},
}
# The ssld (PaddleClas distilled) weights use the W18/W48 layouts with bias-free head convs.
SSLD = {"hrnet_w18_ssld": "hrnet_w18", "hrnet_w48_ssld": "hrnet_w48"}

# Pose and segmentation models -> the classification layout they share.
POSE = {"pose_hrnet_w32": "hrnet_w32", "pose_hrnet_w48": "hrnet_w48"}
SEGMENTATION = {"seg_hrnetv2_w18_small": "hrnet_w18_small", "seg_hrnetv2_w18_small_v2": "hrnet_w18_small_v2",
                "seg_hrnetv2_w18": "hrnet_w18", "seg_hrnetv2_w32": "hrnet_w32", "seg_hrnetv2_w48": "hrnet_w48"}
# Bottom-up pose (HigherHRNet-Human-Pose-Estimation's w32/w48 experiments) and HRNetV2 + OCR (the HRNet-OCR
# branch's seg_hrnet_ocr_w48 configs).
BOTTOM_UP_POSE = {"higher_hrnet_w32": "hrnet_w32", "higher_hrnet_w48": "hrnet_w48"}
OCR = {"seg_hrnetv2_w48_ocr": "hrnet_w48"}
TASK_DEFAULT_CLASSES = {"classification": 1000, "pose": 17, "segmentation": 19, "bottom-up pose": 17,
                        "OCR segmentation": 19}
# Tasks whose models resize bilinearly (align_corners applies).
SEGMENTATION_TASKS = ("segmentation", "OCR segmentation")

ALIASES: Dict[str, str] = {}
for _w in (18, 30, 32, 40, 44, 48, 64):
    ALIASES[f"hrnet_w{_w}_c"] = f"hrnet_w{_w}"      # PaddleClas: HRNet_W18_C
    ALIASES[f"hrnet-w{_w}"] = f"hrnet_w{_w}"        # MMClassification: HRNet-W18
ALIASES["hrnet-w18 (ssld)"] = "hrnet_w18_ssld"
ALIASES["hrnet-w48 (ssld)"] = "hrnet_w48_ssld"
ALIASES["hrnet_w18_c_ssld"] = "hrnet_w18_ssld"
ALIASES["hrnet_w48_c_ssld"] = "hrnet_w48_ssld"
for _w in (32, 48):
    ALIASES[f"pose_hrnet_w{_w}_256x192"] = ALIASES[f"pose_hrnet_w{_w}_384x288"] = f"pose_hrnet_w{_w}"
for _w in (18, 32, 48):
    ALIASES[f"seg_hrnet_w{_w}"] = ALIASES[f"hrnetv2_w{_w}"] = f"seg_hrnetv2_w{_w}"
ALIASES["seg_hrnet_w18_small_v1"] = ALIASES["seg_hrnetv2_w18_small_v1"] = "seg_hrnetv2_w18_small"
ALIASES["seg_hrnet_w18_small_v2"] = "seg_hrnetv2_w18_small_v2"
for _w, _size in ((32, 512), (32, 640), (48, 640)):
    ALIASES[f"higher_hrnet_w{_w}_{_size}"] = ALIASES[f"pose_higher_hrnet_w{_w}_{_size}"] = f"higher_hrnet_w{_w}"
ALIASES["seg_hrnet_ocr_w48"] = ALIASES["hrnet_ocr_w48"] = "seg_hrnetv2_w48_ocr"


def task_of(name: str) -> str:
    """"classification", "pose", "segmentation", "bottom-up pose" or "OCR segmentation" for a canonical model
    name."""
    for task, names in (("pose", POSE), ("segmentation", SEGMENTATION), ("bottom-up pose", BOTTOM_UP_POSE),
                        ("OCR segmentation", OCR)):
        if name in names:
            return task
    return "classification"


def layout_of(name: str) -> Dict:
    """The stage layout of a canonical model name."""
    return CONFIGS[SSLD.get(name) or POSE.get(name) or SEGMENTATION.get(name) or BOTTOM_UP_POSE.get(name)
                   or OCR.get(name) or name]


# timm's published weights per variant (timm.models.hrnet.default_cfgs), default tag first: pretrained=True
# fetches them through timm, which knows where each lives (the Hugging Face hub, timm/<name>.<tag>).
PRETRAINED_TAGS: Dict[str, Tuple[str, ...]] = {
    "hrnet_w18_small": ("gluon_in1k", "ms_in1k"),
    "hrnet_w18_small_v2": ("gluon_in1k", "ms_in1k"),
    "hrnet_w18": ("ms_aug_in1k", "ms_in1k"),
    **{f"hrnet_w{w}": ("ms_in1k",) for w in (30, 32, 40, 44, 48, 64)},
    "hrnet_w18_ssld": ("paddle_in1k",),
    "hrnet_w48_ssld": ("paddle_in1k",),
}


def list_models(task: Optional[str] = None) -> List[str]:
    """The canonical model names, small to large: classification (timm's names), then pose, then segmentation;
    ``task`` ("classification", "pose", "segmentation") keeps one task's."""
    if task is not None and task not in TASK_DEFAULT_CLASSES:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(TASK_DEFAULT_CLASSES)}")
    names = (list(CONFIGS)[:2] + [f"hrnet_w{w}" for w in (18, 30, 32, 40, 44, 48, 64)] + list(SSLD)
             + list(POSE) + list(SEGMENTATION) + list(BOTTOM_UP_POSE) + list(OCR))
    return [n for n in names if task is None or task_of(n) == task]


def parse_name(name: str) -> Tuple[str, Optional[str]]:
    """(canonical name, timm pretrained tag or None) for a model name in any accepted spelling: the canonical
    names, short forms (``w18``, ``w18_small_v2``, ``w48_ssld``), the seed tables' names (``HRNet_W18_C``,
    ``HRNet-W18``, ``HRNet-W48 (ssld)``) and timm's tagged names (``hrnet_w18.ms_aug_in1k``); case-insensitive.
    ValueError listing the valid names otherwise."""
    text = str(name).strip().lower()
    key, _, tag = text.partition(".")
    if re.fullmatch(r"w\d+(_\w+)?", key):
        key = f"hrnet_{key}"
    key = ALIASES.get(key, key)
    if key not in CONFIGS and key not in SSLD and key not in POSE and key not in SEGMENTATION \
            and key not in BOTTOM_UP_POSE and key not in OCR:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())} (short forms such "
                         f"as 'w18', the seed tables' names such as 'HRNet_W18_C' and 'HRNet-W18', aliases such as "
                         f"'seg_hrnet_w48', and timm's tagged names such as 'hrnet_w18.ms_aug_in1k' are accepted "
                         f"too)")
    if not tag:
        return key, None
    if tag not in PRETRAINED_TAGS.get(key, ()):
        tags = PRETRAINED_TAGS.get(key, ())
        raise ValueError(f"{name!r}: {key} has no pretrained tag {tag!r}; " + (
            f"its tags: {', '.join(key + '.' + t for t in tags)}" if tags else
            "timm publishes no weights for it (load a checkpoint file with hrnet_fast.load_checkpoint)"))
    return key, tag


def resolve_name(name: str) -> str:
    """The canonical name for ``name`` in any spelling ``parse_name`` accepts."""
    return parse_name(name)[0]


def create_model(name: str, num_classes: Optional[int] = None, features_only: bool = False,
                 out_indices: Optional[Sequence[int]] = None, feature_location: str = "incre",
                 in_chans: int = 3, align_corners: Optional[bool] = None, pretrained: bool = False,
                 pretrained_cfg_overlay: Optional[Dict] = None) -> nn.Module:
    """Builds a reference HRNet by name (any spelling ``parse_name`` accepts), freshly initialised or, with
    ``pretrained=True`` (classification models), with timm's published weights (``load_pretrained``; a tagged
    name picks which).

    ``num_classes`` defaults to the task's: 1000 ImageNet classes, 17 COCO joints (pose), 19 Cityscapes classes
    (segmentation). ``features_only=True`` (classification models) returns the multi-scale feature maps (stem,
    then the four branches; the incre-module outputs by default, or the raw branch outputs with
    ``feature_location=""``), as timm does. ``align_corners`` (segmentation models) sets every bilinear resize's
    corner alignment: True (default) as the official repository's default, False as mmsegmentation and the
    official Cityscapes, LIP and PASCAL-Context configs (``load_checkpoint`` refuses an mmsegmentation checkpoint
    into a model built with True).
    """
    key, tag = parse_name(name)
    task = task_of(key)
    if num_classes is None:
        num_classes = TASK_DEFAULT_CLASSES[task]
    if task != "classification" and (features_only or out_indices is not None or feature_location != "incre"):
        raise ValueError(f"features_only, out_indices and feature_location apply to classification models; "
                         f"{key} is a {task} model")
    if task not in SEGMENTATION_TASKS and align_corners is not None:
        raise ValueError(f"align_corners applies to segmentation models (bilinear resizing); {key} is a {task} "
                         f"model, whose fusions upsample by nearest neighbour")
    if pretrained and task != "classification":
        raise ValueError(f"pretrained=True fetches timm's ImageNet weights, which exist for classification models "
                         f"only; load a {task} checkpoint into {key} with hrnet_fast.load_checkpoint")
    if pretrained_cfg_overlay is not None and not pretrained:
        raise ValueError("pretrained_cfg_overlay only applies with pretrained=True")
    model = _build(key, task, num_classes, features_only, out_indices, feature_location, in_chans, align_corners)
    if pretrained:
        load_pretrained(model, key, tag, pretrained_cfg_overlay)
    else:  # what timm's models carry without weights too: the weights' facts, for preprocessing and tools
        set_cfg(model, default_cfg(key, task, tag or PRETRAINED_TAGS.get(key, (None,))[0], features_only))
    return model


def _build(key: str, task: str, num_classes: int, features_only: bool, out_indices: Optional[Sequence[int]],
           feature_location: str, in_chans: int, align_corners: Optional[bool]) -> nn.Module:
    """The freshly initialised model of canonical name ``key`` (arguments checked by ``create_model``)."""
    cfg = layout_of(key)
    if task == "pose":
        return PoseHighResolutionNet(cfg, num_joints=num_classes, in_chans=in_chans)
    if task == "segmentation":
        return SegHighResolutionNet(cfg, num_classes=num_classes, in_chans=in_chans,
                                    align_corners=True if align_corners is None else align_corners)
    if task == "bottom-up pose":
        return PoseHigherResolutionNet(cfg, num_joints=num_classes, in_chans=in_chans)
    if task == "OCR segmentation":
        return SegHRNetOCR(cfg, num_classes=num_classes, in_chans=in_chans,
                           align_corners=True if align_corners is None else align_corners)
    if out_indices is not None and not isinstance(out_indices, (list, tuple, range)):
        raise TypeError(f"out_indices must be a sequence of feature indices within 0..4, e.g. (1, 2, 3, 4); "
                        f"got {out_indices!r}")
    return HighResolutionNet(cfg, num_classes=num_classes, in_chans=in_chans, head_conv_bias=key not in SSLD,
                             features_only=features_only, feature_location=feature_location,
                             out_indices=tuple(out_indices) if out_indices is not None else (0, 1, 2, 3, 4))
