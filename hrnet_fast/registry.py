"""Model names, their stage layouts, and ``create_model``.

The layouts are the published HRNet-Image-Classification configs (also timm's ``cfg_cls``): a Bottleneck
stage 1 and BasicBlock stages 2-4 with branch widths C, 2C, 4C, 8C. The pose models
(deep-high-resolution-net.pytorch's ``w32/w48`` experiments) and the HRNetV2 segmentation models
(HRNet-Semantic-Segmentation's ``seg_hrnet_w18/w32/w48`` and ``w18_small_v1/v2``) use the same layouts.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch.nn as nn

from .models import HighResolutionNet, PoseHighResolutionNet, SegHighResolutionNet


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
TASK_DEFAULT_CLASSES = {"classification": 1000, "pose": 17, "segmentation": 19}

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


def task_of(name: str) -> str:
    """"classification", "pose" or "segmentation" for a canonical model name."""
    return "pose" if name in POSE else "segmentation" if name in SEGMENTATION else "classification"


def layout_of(name: str) -> Dict:
    """The stage layout of a canonical model name."""
    return CONFIGS[SSLD.get(name) or POSE.get(name) or SEGMENTATION.get(name) or name]


def list_models(task: Optional[str] = None) -> List[str]:
    """The canonical model names, small to large: classification (timm's names), then pose, then segmentation;
    ``task`` ("classification", "pose", "segmentation") keeps one task's."""
    if task is not None and task not in TASK_DEFAULT_CLASSES:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(TASK_DEFAULT_CLASSES)}")
    names = (list(CONFIGS)[:2] + [f"hrnet_w{w}" for w in (18, 30, 32, 40, 44, 48, 64)] + list(SSLD)
             + list(POSE) + list(SEGMENTATION))
    return [n for n in names if task is None or task_of(n) == task]


def resolve_name(name: str) -> str:
    """Canonical name for ``name`` or one of its aliases (case-insensitive); ValueError listing the valid
    names otherwise."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key in CONFIGS or key in SSLD or key in POSE or key in SEGMENTATION:
        return key
    raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())} "
                     f"(aliases such as 'HRNet_W18_C', 'HRNet-W18' and 'seg_hrnet_w48' are accepted too)")


def create_model(name: str, num_classes: Optional[int] = None, features_only: bool = False,
                 out_indices: Optional[Sequence[int]] = None, feature_location: str = "incre",
                 in_chans: int = 3, align_corners: Optional[bool] = None) -> nn.Module:
    """Builds a reference HRNet by name, with freshly initialised weights.

    ``num_classes`` defaults to the task's: 1000 ImageNet classes, 17 COCO joints (pose), 19 Cityscapes classes
    (segmentation). ``features_only=True`` (classification models) returns the multi-scale feature maps (stem,
    then the four branches; the incre-module outputs by default, or the raw branch outputs with
    ``feature_location=""``), as timm does. ``align_corners`` (segmentation models) sets every bilinear resize's
    corner alignment: True (default) as the official repository, False as mmsegmentation.
    """
    key = resolve_name(name)
    task = task_of(key)
    if num_classes is None:
        num_classes = TASK_DEFAULT_CLASSES[task]
    if task != "classification" and (features_only or out_indices is not None or feature_location != "incre"):
        raise ValueError(f"features_only, out_indices and feature_location apply to classification models; "
                         f"{key} is a {task} model")
    if task != "segmentation" and align_corners is not None:
        raise ValueError(f"align_corners applies to segmentation models (bilinear resizing); {key} is a {task} "
                         f"model, whose fusions upsample by nearest neighbour")
    cfg = layout_of(key)
    if task == "pose":
        return PoseHighResolutionNet(cfg, num_joints=num_classes, in_chans=in_chans)
    if task == "segmentation":
        return SegHighResolutionNet(cfg, num_classes=num_classes, in_chans=in_chans,
                                    align_corners=True if align_corners is None else align_corners)
    if out_indices is not None and not isinstance(out_indices, (list, tuple, range)):
        raise TypeError(f"out_indices must be a sequence of feature indices within 0..4, e.g. (1, 2, 3, 4); "
                        f"got {out_indices!r}")
    return HighResolutionNet(cfg, num_classes=num_classes, in_chans=in_chans, head_conv_bias=key not in SSLD,
                             features_only=features_only, feature_location=feature_location,
                             out_indices=tuple(out_indices) if out_indices is not None else (0, 1, 2, 3, 4))
