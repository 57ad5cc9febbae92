"""Detecting a checkpoint's format and task, loading it into a model, and saying clearly why one does not fit."""
from __future__ import annotations

import functools
import os
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..registry import create_model, list_models
from .base import CheckpointError, Format, LoadReport
from .conventions import AlignCorners, check_align_corners, check_policy
from .official import HRNET_PREFIXES, FlatFormat, UnknownFormat, flat_task
from .openmmlab import MMPoseFormat, MMPoseHigherHRNetFormat, MMPretrainFormat, MMSegFormat, MMSegOCRFormat
from .paddle import PaddleFormat
from .reading import read_checkpoint, summarise, unwrap

TASKS = ("classification", "pose", "segmentation", "bottom-up pose", "OCR segmentation")


def model_task(model: nn.Module) -> str:
    """The task of a model: its ``task`` attribute (ours), else what its head looks like (the official
    repositories' classes: ``last_layer`` segments, a bare conv ``final_layer`` makes heatmaps)."""
    task = getattr(model, "task", None)
    if task in TASKS:
        return task
    if isinstance(getattr(model, "final_layers", None), nn.ModuleList) and \
            isinstance(getattr(model, "deconv_layers", None), nn.ModuleList):
        return "bottom-up pose"
    if isinstance(getattr(model, "cls_head", None), nn.Conv2d) and hasattr(model, "ocr_distri_head"):
        return "OCR segmentation"
    if isinstance(getattr(model, "last_layer", None), nn.Sequential):
        return "segmentation"
    if isinstance(getattr(model, "final_layer", None), nn.Conv2d):
        return "pose"
    return "classification"


def detect_format(state_dict: Mapping[str, object], task: Optional[str] = None) -> Format:
    """The format of a state dict (already unwrapped), from its keys. ``task`` (the model's) decides only where
    the keys cannot: an OpenMMLab or flat checkpoint of a backbone alone."""
    keys = set(state_dict)
    if any(k.startswith("decode_head.1.object_context_block.") for k in keys):
        return MMSegOCRFormat()
    if any(k.startswith("decode_head.") for k in keys):
        return MMSegFormat()
    if any(k.startswith(("keypoint_head.final_layers.", "keypoint_head.deconv_layers.")) for k in keys):
        return MMPoseHigherHRNetFormat()
    if any(k.startswith("keypoint_head.") for k in keys):
        return MMPoseFormat("0.x")
    if any(k.startswith("head.final_layer.") for k in keys):
        return MMPoseFormat("1.x")
    if any(k.startswith(("neck.", "head.fc.")) for k in keys):
        return MMPretrainFormat()
    if any(k.startswith("backbone.") for k in keys):
        return {"pose": MMPoseFormat("1.x"), "segmentation": MMSegFormat(),
                "bottom-up pose": MMPoseHigherHRNetFormat()}.get(task or "", MMPretrainFormat())
    if "conv_layer1_1.conv.weight" in keys:
        return PaddleFormat("legendary")
    if "conv_layer1_1._conv.weight" in keys:
        return PaddleFormat("model_zoo" if any(k.startswith("la1.") for k in keys) else "legendary_v1")
    flat = flat_task(keys) or task or "classification"
    if any(k.startswith(HRNET_PREFIXES) for k in keys):
        return FlatFormat(flat)
    return UnknownFormat(flat)


@functools.lru_cache(maxsize=None)
def _variant_shapes(name: str) -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):
        model = create_model(name)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def identify_variant(state_dict: Mapping[str, torch.Tensor], fmt: Optional[Format] = None) -> List[str]:
    """Registered variants of the checkpoint's task whose architecture matches a state dict (any format; the size
    of the output layer, classes or joints, is not compared). Empty when none does."""
    fmt = fmt or detect_format(state_dict)

    def body(shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Tuple[int, ...]]:
        return {k: s for k, s in shapes.items() if not k.startswith(fmt.classifier_prefixes)}

    width_key = fmt.key_of("transition1.0.0.weight")
    if width_key not in state_dict:
        return []
    width = state_dict[width_key].shape[0]
    found = body({k: tuple(v.shape) for k, v in state_dict.items()})
    matches = []
    for name in list_models(fmt.task):
        shapes = _variant_shapes(name)
        if shapes["transition1.0.0.weight"][0] != width:
            continue
        expected = {fk: shape for k, shape in shapes.items() if (fk := fmt.key_of(k)) is not None}
        if body(expected) == found:
            matches.append(name)
    return matches


def _ignored_prefixes(model: nn.Module, fmt: Format) -> Tuple[str, ...]:
    """Checkpoint entries a features-only model has no modules for."""
    if not getattr(model, "features_only", False):
        return ()
    incre = fmt.incre_prefixes if getattr(model, "incre_modules", None) is None else ()
    return fmt.head_prefixes + incre


def load_checkpoint(model: nn.Module, path_or_state_dict: Union[str, os.PathLike, Mapping[str, object]],
                    strict: bool = True, align_corners: AlignCorners = "check") -> LoadReport:
    """Loads a checkpoint (file or dict) into ``model``: classification (timm/official, mmpretrain/MMClassification,
    PaddleClas), pose (official, mmpose 1.x and 0.x), bottom-up pose HigherHRNet (official, mmpose 0.x's
    ``AEHigherResolutionHead``), segmentation (official, mmsegmentation) or HRNet + OCR (official, mmsegmentation's
    OCRNet).

    The format is detected from the keys (the format modules' docstrings). With ``strict=True`` (default) every
    entry must fit: missing, unexpected or mis-shaped entries raise one :class:`CheckpointError` naming them (and
    the variant the checkpoint looks like, when it is another one), and a checkpoint of another task (a pose
    checkpoint into a segmentation model, say) raises one saying so. With ``strict=False`` what fits is loaded and
    the rest is listed in the returned :class:`LoadReport` (an ImageNet checkpoint initialises a pose or
    segmentation model's backbone this way).

    A segmentation checkpoint's resize convention is checked against the model's ``align_corners``
    (``conventions.py``): with ``align_corners="check"`` (default) an mmsegmentation checkpoint (trained with
    False) into a model built with True raises a :class:`CheckpointError` saying how to build the right model, and
    a flat checkpoint, which does not record it, warns once. ``align_corners=True``/``False`` states the
    checkpoint's convention (checked, no warning); ``"ignore"`` skips the check.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_checkpoint expects an nn.Module, got {type(model).__name__}")
    _check_not_converted(model)
    check_policy(align_corners)
    raw = path_or_state_dict if isinstance(path_or_state_dict, Mapping) else read_checkpoint(path_or_state_dict)
    state = unwrap(raw)
    if not state:
        raise CheckpointError("the checkpoint holds no tensors")
    task = model_task(model)
    fmt = detect_format(state, task)
    if fmt.task != task and strict:
        raise CheckpointError(_wrong_task_message(model, task, state, fmt))
    report = LoadReport(format=fmt.name)

    target = model.state_dict()
    ours_of: Dict[str, str] = {}   # checkpoint key -> our key
    no_entry: List[str] = []      # our keys the format does not store
    for key in target:
        foreign = fmt.key_of(key)
        if foreign is None:
            no_entry.append(key)
        else:
            ours_of[foreign] = key

    ignored = _ignored_prefixes(model, fmt)
    converted: Dict[str, torch.Tensor] = {}
    for foreign, value in state.items():
        if ignored and foreign.startswith(ignored):
            report.ignored_keys.append(foreign)
            continue
        key = ours_of.get(foreign)
        if key is None:
            report.unexpected_keys.append(foreign)
            continue
        value = fmt.to_ours(key, value)
        if value.shape != target[key].shape:
            report.mismatched_keys[foreign] = (tuple(value.shape), tuple(target[key].shape))
            continue
        converted[key] = value
    report.missing_keys = [f for f, k in ours_of.items() if k not in converted and f not in report.mismatched_keys]
    # Entries the format has no place for: BN batch counters (PaddleClas) and conv biases folded into BN
    # (mmpretrain, PaddleClas, mmsegmentation), which those models do not have: zero is their exact equivalent.
    for key in no_entry:
        converted[key] = torch.zeros_like(target[key])

    problems = report.missing_keys or report.unexpected_keys or report.mismatched_keys
    if problems and strict:
        details = _mismatch_details(model, state, fmt, report)
        hints = ["  Use strict=False to load what fits."]
        head = _higher_head_differences(model, state, fmt, report) if fmt.task == "bottom-up pose" else None
        if head is not None:
            details += "".join(f"\n  {line}" for line in head[0])
            hints.insert(0, f"  {head[1]}")
        elif any(k.startswith(fmt.classifier_prefixes) and c[:1] != m[:1]  # outputs, not inputs, differ
                 for k, (c, m) in report.mismatched_keys.items()):
            what = {"classification": "classifier size", "pose": "number of joints",
                    "segmentation": "number of classes", "bottom-up pose": "number of joints",
                    "OCR segmentation": "number of classes"}[fmt.task]
            hints.insert(0, f"  The {what} differs: build the model with the checkpoint's num_classes.")
            outputs = _classifier_size(state, fmt)
            joints = next((m[0] for k, (c, m) in report.mismatched_keys.items()
                           if k.startswith(fmt.classifier_prefixes)), None)
            if fmt.task == "pose" and joints and outputs in (2 * joints, joints + 1):
                hints.insert(1, f"  Its {outputs} outputs are this model's {joints} joints plus "
                                f"{outputs - joints} tag map(s): if it is a bottom-up associative-embedding "
                                f"checkpoint (mmpose's AESimpleHead or AssociativeEmbeddingHead: heatmaps and tags "
                                f"from one conv), its outputs are not {outputs} joints' heatmaps and no top-down "
                                f"pose model reads it correctly.")
        raise CheckpointError("\n".join([details] + hints), details, _classifier_size(state, fmt))
    check_align_corners(model, task, state, fmt, align_corners, lambda: identify_variant(state, fmt))
    model.load_state_dict(converted, strict=not problems)
    return report


def _wrong_task_message(model: nn.Module, task: str, state: Mapping[str, torch.Tensor], fmt: Format) -> str:
    variants = identify_variant(state, fmt)
    looks = f" of {' or '.join(variants)}" if variants else ""
    build = (f" Build {variants[0]} (hrnet_fast.create_model({variants[0]!r})) to load it whole, or"
             if variants else "")
    return (f"the checkpoint is {_article(fmt.task)} {fmt.task} checkpoint{looks} ({fmt.name} format), but this "
            f"{type(model).__name__} is {_article(task)} {task} model.{build} load it with strict=False to take the "
            f"backbone weights only.")


def _article(task: str) -> str:
    return "an" if task[0] in "aeiouAEIO" else "a"  # "an OCR segmentation", "a pose"


def _check_not_converted(model: nn.Module) -> None:
    """A converted model has BatchNorm folded into fused convolutions: none of a checkpoint's keys fit it."""
    from ..convert import ConvertedModel
    from ..convert.fused import FoldedConv, FusedConvBNAct
    if any(isinstance(m, (ConvertedModel, FusedConvBNAct, FoldedConv)) for m in model.modules()):
        raise CheckpointError("this model was converted (BatchNorm is folded into its fused convolutions), so a "
                              "checkpoint cannot be loaded into it: load the checkpoint before convert(), i.e. "
                              "load_checkpoint(model, path), then fast = hrnet_fast.convert(model.eval())")


def _classifier_size(state: Mapping[str, torch.Tensor], fmt: Format) -> Optional[int]:
    """Outputs of the checkpoint's output layer (classes, joints), or None where it has none."""
    for ours in ("classifier.weight", "final_layer.weight", "last_layer.3.weight", "final_layers.1.weight",
                 "cls_head.weight"):
        value = state.get(fmt.key_of(ours) or "")
        if value is not None and value.dim() >= 2 and fmt.key_of(ours).startswith(fmt.classifier_prefixes):
            return fmt.to_ours(ours, value).shape[0]
    return None


def _mismatch_details(model: nn.Module, state: Mapping[str, torch.Tensor], fmt: Format, report: LoadReport) -> str:
    """What does not fit, one problem a line (no advice on what to call)."""
    if isinstance(fmt, UnknownFormat):
        lines = [f"the checkpoint's keys are not HRNet's in any format this loader reads (timm/official, mmpretrain, "
                 f"mmpose, mmsegmentation, PaddleClas); is it another architecture's checkpoint? It does not fit "
                 f"this {type(model).__name__}:"]
    else:
        lines = [f"the checkpoint ({report.format} format) does not fit this {type(model).__name__}:"]
    for label, keys in (("missing from the checkpoint", report.missing_keys),
                        ("unexpected in the checkpoint", report.unexpected_keys),
                        ("shape mismatch", list(report.mismatched_keys))):
        if keys:
            lines.append(f"  {label} ({len(keys)}): {summarise(keys)}")
    if report.mismatched_keys:
        examples = list(report.mismatched_keys.items())[:3]
        lines.append("  e.g. " + "; ".join(f"{k}: checkpoint {list(c)}, model {list(m)}" for k, (c, m) in examples))
    variants = identify_variant(state, fmt)
    widths = getattr(model, "stage_channels", None)
    if variants:
        lines.append(f"  The checkpoint looks like a checkpoint of {' or '.join(variants)}"
                     + (f"; this model's branch widths are {list(widths)}." if widths else "."))
    if report.ignored_keys:
        lines.append(f"  ignored (no such modules in a features_only model): {len(report.ignored_keys)} keys")
    return "\n".join(lines)


# HigherHRNet head arguments (PoseHigherResolutionNet's) and what the mmpose 0.x config calls them.
_MMPOSE_HEAD_ARGS = {"num_joints": "num_joints", "tag_per_joint": "tag_per_joint", "with_ae": "with_ae_loss",
                     "deconv_channels": "num_deconv_filters", "deconv_kernel": "num_deconv_kernels",
                     "num_basic_blocks": "num_basic_blocks", "cat_output": "cat_output",
                     "final_conv_kernel": "extra.final_conv_kernel"}


def _read_higher_head(shape_of: Callable[[str], Optional[Tuple[int, ...]]],
                      joints: Optional[int] = None) -> Optional[Dict[str, object]]:
    """A HigherHRNet head's ``PoseHigherResolutionNet`` arguments, read from its shapes (``shape_of``: our key ->
    shape, None where absent); None where the head is not readable. The output layers' channels are heatmaps
    (``num_joints``) plus, where ``with_ae``, tag maps (``num_joints`` of them, or 1 without ``tag_per_joint``):
    ``joints`` (the model's) is tried first to split them, then the smallest output."""
    finals: List[Tuple[int, ...]] = []
    while (shape := shape_of(f"final_layers.{len(finals)}.weight")) is not None and len(shape) == 4:
        finals.append(shape)
    deconvs = [shape_of(f"deconv_layers.{i}.0.0.weight") for i in range(len(finals) - 1)]
    if not finals or any(d is None or len(d) != 4 for d in deconvs):
        return None
    blocks = []
    for i in range(len(deconvs)):
        k = 1
        while shape_of(f"deconv_layers.{i}.{k}.0.conv1.weight") is not None:
            k += 1
        blocks.append(k - 1)

    def one(values: List[int]) -> object:  # the constructor takes one value for every stage
        distinct = sorted(set(values))
        return distinct[0] if len(distinct) == 1 else (distinct or None)

    outputs = [f[0] for f in finals]
    head: Dict[str, object] = {
        "outputs": outputs, "deconv_channels": [d[1] for d in deconvs],
        "deconv_kernel": one([d[-1] for d in deconvs]), "num_basic_blocks": one(blocks),
        "final_conv_kernel": one([f[-1] for f in finals]),
        "cat_output": [d[0] == finals[i][1] + outputs[i] for i, d in enumerate(deconvs)]}
    for j in ([joints] if joints else []) + [min(outputs)]:
        tags = {o - j for o in outputs} - {0}
        if len(tags) <= 1 and tags <= {j, 1}:
            head.update(num_joints=j, with_ae=[o != j for o in outputs])
            if tags:
                head["tag_per_joint"] = tags == {j}
            break
    return head


def _higher_head_differences(model: nn.Module, state: Mapping[str, torch.Tensor], fmt: Format,
                             report: LoadReport) -> Optional[Tuple[List[str], str]]:
    """Where only the HigherHRNet head does not fit (the backbone does): the head arguments that differ (lines
    for the details) and the model to build (a hint); None otherwise."""
    head_keys = tuple(fmt.key_of(k) for k in ("final_layers.", "deconv_layers."))
    if not all(k.startswith(head_keys) for k in [*report.missing_keys, *report.unexpected_keys,
                                                 *report.mismatched_keys]):
        return None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = _read_higher_head(shapes.get, getattr(model, "num_joints", None))
    theirs = _read_higher_head(lambda k: tuple(state[f].shape) if (f := fmt.key_of(k)) in state else None,
                               ours["num_joints"] if ours else None)
    if ours is None or theirs is None:
        return None
    names = _MMPOSE_HEAD_ARGS if fmt.name.startswith("mmpose") else {}
    deconvs = len(theirs["outputs"]) - 1
    # With another number of deconvs, these follow from with_ae unless they are not the constructor's defaults.
    implied = {"cat_output": [True] * deconvs, "deconv_channels": [shapes["final_layers.0.weight"][1]] * deconvs}
    differ, build = [], []
    for arg in ("num_joints", "tag_per_joint", "with_ae", "cat_output", "deconv_channels", "deconv_kernel",
                "num_basic_blocks", "final_conv_kernel"):
        a, b = theirs.get(arg), ours.get(arg)
        if a == b or (arg != "num_joints" and (a is None or b is None)):  # e.g. no tags, or no deconv
            continue
        if arg in implied and len(a) != len(b) and a == implied[arg]:
            continue
        alias = f"{fmt.name}'s {names[arg]}; " if names.get(arg, arg) != arg else ""
        differ.append(f"{arg}={a if a is not None else 'unreadable'} ({alias}this model: {b})")
        if a is not None:
            build.append(f"{arg}={a}")
    if not differ and theirs["outputs"] == ours["outputs"]:
        return None
    lines = [f"HigherHRNet head: the checkpoint's was built with {', '.join(differ) or 'other output layers'}; "
             f"output channels per output, checkpoint {theirs['outputs']}, this model {ours['outputs']}."]
    if "num_joints" in theirs and theirs["num_joints"] != ours.get("num_joints"):
        lines.append("The number of joints differs.")
    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if name and build == [f"num_joints={theirs.get('num_joints')}"]:  # create_model builds this one
        return lines, (f"Build the model with the checkpoint's number of joints, hrnet_fast.create_model({name!r}, "
                       f"num_classes={theirs['num_joints']}), and load the checkpoint into that.")
    args = ", ".join(["cfg"] + build)
    return lines, (f"Build the model with the checkpoint's head, {type(model).__name__}({args}) (cfg: this model's "
                   f"stage layout), and load the checkpoint into that.")
