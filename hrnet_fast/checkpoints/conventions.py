"""The resize convention (``align_corners``) a segmentation checkpoint was trained with, checked against the model.

A state dict has no entry for it, yet weights trained with one convention give wrong logits under the other (about
half the pixels change class). Some formats fix it: mmsegmentation's HRNet + FCNHead models always resize with
``align_corners=False`` (``Format.align_corners``). The flat layout (ours, and HRNet-Semantic-Segmentation's) does
not: that repository's ``MODEL.ALIGN_CORNERS`` defaults to True (kept by its ADE20K and COCO-Stuff configs), its
Cityscapes, LIP and PASCAL-Context configs set False, and its pytorch-v1.1 branch resizes with PyTorch's default,
False.

``load_checkpoint``'s ``align_corners`` argument says what to do:

``"check"`` (default)
    a format that fixes the convention must match the model's (``CheckpointError`` otherwise); a format that
    does not gets one warning naming both conventions.
``True`` / ``False``
    the convention the checkpoint was trained with, stated by the caller (for a flat checkpoint, or to overrule
    the format's): checked against the model, no warning.
``"ignore"``
    no check and no warning.

Only checkpoints holding a segmentation head are concerned: a backbone alone (an ImageNet or backbone-only
checkpoint initialising a segmentation model) was not trained to produce these logits.
"""
from __future__ import annotations

import warnings
from typing import Callable, List, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..registry import SEGMENTATION_TASKS
from .base import CheckpointError, Format

AlignCorners = Union[str, bool]
POLICIES = ("check", "ignore")
# What each convention means, for messages.
MEANINGS = {True: "corner pixels aligned, as HRNet-Semantic-Segmentation's default MODEL.ALIGN_CORNERS (its "
                  "ADE20K and COCO-Stuff configs)",
            False: "half-pixel centres, as mmsegmentation and HRNet-Semantic-Segmentation's Cityscapes, LIP and "
                   "PASCAL-Context configs"}


def check_policy(align_corners: AlignCorners) -> None:
    """``align_corners`` is an argument ``load_checkpoint`` understands."""
    if isinstance(align_corners, bool) or (isinstance(align_corners, str) and align_corners in POLICIES):
        return
    raise ValueError(f"load_checkpoint's align_corners must be 'check' (default), 'ignore', or True/False (the "
                     f"convention the checkpoint was trained with); got {align_corners!r}")


def check_align_corners(model: nn.Module, task: str, state: Mapping[str, torch.Tensor], fmt: Format,
                        align_corners: AlignCorners, variants: Callable[[], List[str]]) -> None:
    """Raises ``CheckpointError`` where the checkpoint's known convention is not the model's, warns once where
    it is unknown (module docstring). ``variants`` names the registered models the checkpoint fits (for the
    advice; called only on a mismatch)."""
    if align_corners == "ignore" or task not in SEGMENTATION_TASKS or not _holds_segmentation_head(state, fmt):
        return
    stated = isinstance(align_corners, bool)
    trained: Optional[bool] = align_corners if stated else fmt.align_corners
    ours = getattr(model, "align_corners", None)
    if not isinstance(ours, bool):  # not one of ours: e.g. the official class, which keeps it in a module global
        warnings.warn(f"cannot tell which align_corners this {type(model).__name__} resizes with (it has no "
                      f"boolean align_corners attribute), so the checkpoint's convention"
                      + (f" (align_corners={trained})" if trained is not None else "")
                      + " was not checked against it", stacklevel=3)
        return
    if trained is None:
        warnings.warn(_unknown_message(model, fmt, ours), stacklevel=3)
    elif trained != ours:
        why = "as stated by load_checkpoint(..., align_corners=...)" if stated else fmt.align_corners_source
        raise CheckpointError(_mismatch_message(model, fmt, trained, why, variants()))


def _holds_segmentation_head(state: Mapping[str, torch.Tensor], fmt: Format) -> bool:
    """Whether the checkpoint holds a segmentation classifier (HRNetV2's ``last_layer.3``, OCR's ``cls_head`` and
    ``aux_head.3``, in the format's names)."""
    return fmt.task in SEGMENTATION_TASKS and any(k.startswith(fmt.classifier_prefixes) for k in state)


def _rebuild(model: nn.Module, variants: List[str], align_corners: bool) -> str:
    """The call that builds this model with the other convention."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or (variants[0] if variants else None)
    classes = getattr(model, "num_classes", None)
    args = (f", num_classes={classes}" if classes is not None else "") + f", align_corners={align_corners}"
    if name is None:
        return f"{type(model).__name__}(cfg{args})"
    return f"hrnet_fast.create_model({name!r}{args})"


def _mismatch_message(model: nn.Module, fmt: Format, trained: bool, why: str, variants: List[str]) -> str:
    return (f"align_corners mismatch: this {fmt.name}-format segmentation checkpoint was trained with "
            f"align_corners={trained} ({why}), but this {type(model).__name__} resizes with "
            f"align_corners={not trained}, which gives wrong logits with these weights. Build the model with the "
            f"checkpoint's convention, {_rebuild(model, variants, trained)}, and load the checkpoint into that; "
            f"or pass align_corners='ignore' to load_checkpoint to load it into this model anyway.")


def _unknown_message(model: nn.Module, fmt: Format, ours: bool) -> str:
    return (f"the checkpoint ({fmt.name} format) does not record the align_corners it was trained with; this "
            f"{type(model).__name__} resizes with align_corners={ours}. align_corners=True: {MEANINGS[True]}; "
            f"align_corners=False: {MEANINGS[False]}. Weights give wrong logits under the other convention. If the "
            f"checkpoint was trained with align_corners={not ours}, build the model with create_model(..., "
            f"align_corners={not ours}). State the convention with load_checkpoint(..., align_corners=True or "
            f"False) to have it checked without this warning, or pass align_corners='ignore'.")
