"""What every checkpoint format shares: the error, the load report, and the ``Format`` interface (our key <->
the format's key, for one task)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Pattern, Tuple

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that does not fit the model.

    For a checkpoint that does not fit, ``details`` holds what does not (one problem a line) without the advice
    on what to call, and ``num_classes`` the checkpoint's classifier size (None where it has no classifier), so
    a command line can give its own advice."""

    def __init__(self, message: str, details: Optional[str] = None, num_classes: Optional[int] = None):
        super().__init__(message)
        self.details = details
        self.num_classes = num_classes


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did. Key names are the checkpoint's own (its format's names)."""

    format: str
    ignored_keys: List[str] = field(default_factory=list)
    missing_keys: List[str] = field(default_factory=list)
    unexpected_keys: List[str] = field(default_factory=list)
    # checkpoint key -> (its shape in the checkpoint, in our layout; the model's shape)
    mismatched_keys: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=dict)


# Head convs that carry a bias in timm/official classification checkpoints and none in mmpretrain/PaddleClas ones.
HEAD_CONV_BIAS = re.compile(r"^(downsamp_modules\.\d+|final_layer)\.0\.bias$")
NEVER = re.compile(r"(?!)")  # matches no key


class Format:
    """Our names <-> one checkpoint format's names, for the models of one task. Subclasses define ``key_of``;
    every mapping goes from our key to theirs, so loading builds the reverse table from the model's own keys."""

    name = ""
    task = "classification"
    # Prefixes (in the format's names) of the classification head, and of the incre modules (features_only).
    head_prefixes: Tuple[str, ...] = ()
    incre_prefixes: Tuple[str, ...] = ()
    # The output layer, whose size (classes, joints) may differ between checkpoints of one architecture.
    classifier_prefixes: Tuple[str, ...] = ()
    # Our conv biases the format does not store: its conv has none and the following BN (our key with
    # "0.bias" -> "1.running_mean") absorbs them on export.
    folded_biases: Pattern[str] = NEVER
    # Segmentation formats: the align_corners every model saved in this format was trained with, and why; None
    # where the format does not fix it (``conventions.py``).
    align_corners: Optional[bool] = None
    align_corners_source = ""

    def key_of(self, key: str) -> Optional[str]:
        """The format's name for our ``key``, or None where the format has no such entry."""
        raise NotImplementedError

    def to_ours(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """The format's value of our ``key`` in our layout."""
        return value

    def from_ours(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """Our value of ``key`` in the format's layout."""
        return value


class RuleFormat(Format):
    """A format whose names follow from ours by regular-expression rules: (our key pattern, the format's key
    template or None for "no entry"); the first match wins, the last rule must match every key."""

    RULES: List[Tuple[Pattern[str], Optional[str]]] = []

    def key_of(self, key: str) -> Optional[str]:
        for pattern, template in self.RULES:
            match = pattern.match(key)
            if match:
                return None if template is None else match.expand(template)
        raise AssertionError("the last rule matches every key")


def rules(pairs: List[Tuple[str, Optional[str]]]) -> List[Tuple[Pattern[str], Optional[str]]]:
    return [(re.compile(pattern), template) for pattern, template in pairs]


def fold_biases(state_dict: Mapping[str, torch.Tensor], fmt: Format) -> Dict[str, torch.Tensor]:
    """Our state dict with the conv biases ``fmt`` does not store folded into the next BN's running mean
    (``BN(conv(x) + b)`` has mean ``mean - b``: exact up to fp32 rounding) and removed."""
    out = dict(state_dict)
    for key in [k for k in out if fmt.folded_biases.match(k)]:
        bias = out.pop(key)
        bn_mean = key[: -len("0.bias")] + "1.running_mean"
        out[bn_mean] = out[bn_mean] - bias
    return out


def export(state_dict: Mapping[str, torch.Tensor], fmt: Format) -> Dict[str, torch.Tensor]:
    """Our state dict in ``fmt``'s names and layout (biases it does not store folded into BN)."""
    out = {}
    for key, value in fold_biases(state_dict, fmt).items():
        foreign = fmt.key_of(key)
        if foreign is not None:
            out[foreign] = fmt.from_ours(key, value)
    return out
