"""The flat layout: our own names, which are those of timm and of the official HRNet repositories
(HRNet-Image-Classification, deep-high-resolution-net.pytorch, HRNet-Semantic-Segmentation).

The task shows in the head's keys: ``incre_modules``/``classifier`` (classification), ``final_layer.weight`` with
no ``.0`` (pose heatmaps), ``last_layer.*`` (segmentation), ``final_layers.*``/``deconv_layers.*`` (HigherHRNet,
HigherHRNet-Human-Pose-Estimation), ``conv3x3_ocr``/``ocr_distri_head``/``cls_head``/``aux_head`` (HRNet + OCR, the
HRNet-Semantic-Segmentation HRNet-OCR branch).
"""
from __future__ import annotations

from typing import AbstractSet, Optional

from .base import Format

# Per task: (format name, head prefixes, output-layer prefixes)
_TASKS = {
    "classification": ("timm", ("downsamp_modules.", "final_layer.", "classifier."), ("classifier.",)),
    "pose": ("official", (), ("final_layer.",)),
    "segmentation": ("official", (), ("last_layer.3.",)),
    # HigherHRNet's output convs (all sized by the joints) and HRNet-OCR's two classifiers.
    "bottom-up pose": ("official", (), ("final_layers.",)),
    "OCR segmentation": ("official", (), ("cls_head.", "aux_head.3.")),
}


class FlatFormat(Format):
    incre_prefixes = ("incre_modules.",)

    def __init__(self, task: str = "classification"):
        self.task = task
        self.name, self.head_prefixes, self.classifier_prefixes = _TASKS[task]

    def key_of(self, key: str) -> Optional[str]:
        return key


def flat_task(keys: AbstractSet[str]) -> Optional[str]:
    """The task whose head a flat state dict holds, or None for a backbone alone."""
    if any(k.startswith(("conv3x3_ocr.", "ocr_distri_head.", "cls_head.", "aux_head.")) for k in keys):
        return "OCR segmentation"
    if any(k.startswith(("final_layers.", "deconv_layers.")) for k in keys):
        return "bottom-up pose"
    if any(k.startswith("last_layer.") for k in keys):
        return "segmentation"
    if "final_layer.weight" in keys:
        return "pose"
    if any(k.startswith(("incre_modules.", "downsamp_modules.", "classifier.", "final_layer.0.")) for k in keys):
        return "classification"
    return None


TimmFormat = FlatFormat  # the classification flat layout's historical name


class UnknownFormat(FlatFormat):
    """Keys of no HRNet format (another architecture's checkpoint): matched by name, as timm's would be, so
    ``strict=False`` loads what fits, but not called timm's."""

    def __init__(self, task: str = "classification"):
        super().__init__(task)
        self.name = "unknown"


# Modules only HRNet has (a ResNet has conv1, layer1 and fc too): a flat HRNet checkpoint has some of them.
HRNET_PREFIXES = ("transition", "stage2.", "stage3.", "stage4.", "incre_modules.", "downsamp_modules.",
                  "final_layer.", "last_layer.")
