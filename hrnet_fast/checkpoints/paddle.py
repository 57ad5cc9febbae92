"""PaddleClas ``.pdparams`` checkpoints (classification): a pickle of a dict of numpy arrays plus bookkeeping
entries such as ``StructuredToParameterName@@``.

Names follow the PaddleClas module tree (``conv_layer1_1``, ``layer1``, ``conv_tr1_1``,
``st2.stage_func_list.{m}.basic_block_list.{branch}.{block}``, ``…fuse_func.residual_func_list.{k}`` (the fusion
terms flattened in order), ``last_cls.func_list``, ``cls_head_conv_list``, ``conv_last``, ``fc``); each conv+BN
pair is ``<unit>.conv`` / ``<unit>.bn`` with BN statistics ``_mean`` / ``_variance``; ``fc.weight`` is stored
[in, out]. Three spellings are read: the current ``legendary_models`` one, its first version
(``_conv``/``_batch_norm``, ``tr1_1``, ``out``) and the older ``model_zoo`` one (``la1.bb_layer2_1``,
``tr1.transition_tr1_layer_1``, ``stage_st2_1``…). Head convs have no bias.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from .base import HEAD_CONV_BIAS, CheckpointError, Format, export


@dataclass(frozen=True)
class PaddleSpelling:
    """Name templates of one PaddleClas version. Fields: b/br/m/i/j/k are 0-based indices and b1/br1/m1/i1/j1/k1
    the 1-based ones; ``idx`` is the position of a fusion term in the flattened ``residual_func_list``."""

    conv: str
    bn: str
    fc: str
    stem: str
    layer1_block: str
    first_transition: str   # the two transitions out of layer1
    later_transition: str   # the new branch added before stages 3 and 4
    module: str
    block: str
    fuse_up: str
    fuse_down: str
    incre: str
    head_down: str
    final: str = "conv_last"


PADDLE_SPELLINGS = {
    "legendary": PaddleSpelling(
        conv="conv", bn="bn", fc="fc", stem="conv_layer1_{n}", layer1_block="layer1.{b}",
        first_transition="conv_tr1_{i1}", later_transition="conv_tr{t}", module="st{s}.stage_func_list.{m}",
        block="{module}.basic_block_list.{br}.{b}", fuse_up="{module}.fuse_func.residual_func_list.{idx}",
        fuse_down="{module}.fuse_func.residual_func_list.{idx}", incre="last_cls.func_list.{i}",
        head_down="cls_head_conv_list.{i}"),
    "legendary_v1": PaddleSpelling(
        conv="_conv", bn="_batch_norm", fc="out", stem="conv_layer1_{n}", layer1_block="layer1.{b}",
        first_transition="tr1_{i1}", later_transition="tr{t}", module="st{s}.stage_func_list.{m}",
        block="{module}.basic_block_list.{br}.{b}", fuse_up="{module}.fuse_func.residual_func_list.{idx}",
        fuse_down="{module}.fuse_func.residual_func_list.{idx}", incre="last_cls.func_list.{i}",
        head_down="cls_head_conv_list.{i}"),
    "model_zoo": PaddleSpelling(
        conv="_conv", bn="_batch_norm", fc="out", stem="conv_layer1_{n}", layer1_block="la1.bb_layer2_{b1}",
        first_transition="tr{t}.transition_tr{t}_layer_{i1}", later_transition="tr{t}.transition_tr{t}_layer_{i1}",
        module="st{s}.stage_st{s}_{m1}", block="{module}.branches_func.bb_st{s}_{m1}_branch_layer_{br1}_{b1}",
        fuse_up="{module}.fuse_func.residual_st{s}_{m1}_layer_{i1}_{j1}",
        fuse_down="{module}.fuse_func.residual_st{s}_{m1}_layer_{i1}_{j1}_{k1}",
        incre="last_cls.conv_cls_head_conv_{i1}", head_down="cls_head_add{i1}"),
}

BN_FIELDS = {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}


def fuse_term_index(num_branches: int, i: int, j: int, k: int) -> int:
    """Position of fusion term (output branch i, input branch j, down step k) in PaddleClas's flat list: output
    branches in order, input branches in order (j == i has no term), one term for j > i, i - j steps for j < i."""
    terms = [(oi, oj, ok) for oi in range(num_branches) for oj in range(num_branches) if oj != oi
             for ok in range(1 if oj > oi else oi - oj)]
    return terms.index((i, j, k))


class PaddleFormat(Format):
    name = "paddle"
    folded_biases = HEAD_CONV_BIAS

    # Our module path -> (unit kind, part): part is "conv" or "bn"; the groups feed the spelling's templates.
    UNITS = [(re.compile(pattern), kind) for pattern, kind in [
        (r"^(?P<part>conv|bn)(?P<n>[12])$", "stem"),
        (r"^layer1\.(?P<b>\d+)\.(?P<part>conv|bn)(?P<c>[123])$", "layer1"),
        (r"^layer1\.(?P<b>\d+)\.downsample\.(?P<idx01>[01])$", "layer1_down"),
        (r"^transition(?P<t>\d)\.(?P<i>\d+)\.(?P<idx01>[01])$", "transition"),
        (r"^transition(?P<t>\d)\.(?P<i>\d+)\.0\.(?P<idx01>[01])$", "transition"),
        (r"^stage(?P<s>\d)\.(?P<m>\d+)\.branches\.(?P<br>\d+)\.(?P<b>\d+)\.(?P<part>conv|bn)(?P<c>[12])$", "block"),
        (r"^stage(?P<s>\d)\.(?P<m>\d+)\.fuse_layers\.(?P<i>\d+)\.(?P<j>\d+)\.(?P<idx01>[01])$", "fuse_up"),
        (r"^stage(?P<s>\d)\.(?P<m>\d+)\.fuse_layers\.(?P<i>\d+)\.(?P<j>\d+)\.(?P<k>\d+)\.(?P<idx01>[01])$",
         "fuse_down"),
        (r"^incre_modules\.(?P<i>\d+)\.0\.(?P<part>conv|bn)(?P<c>[123])$", "incre"),
        (r"^incre_modules\.(?P<i>\d+)\.0\.downsample\.(?P<idx01>[01])$", "incre_down"),
        (r"^downsamp_modules\.(?P<i>\d+)\.(?P<idx01>[01])$", "head_down"),
        (r"^final_layer\.(?P<idx01>[01])$", "final"),
    ]]

    def __init__(self, spelling: str = "legendary"):
        if spelling not in PADDLE_SPELLINGS:
            raise ValueError(f"unknown PaddleClas spelling {spelling!r}; one of {', '.join(PADDLE_SPELLINGS)}")
        self.spelling = spelling
        self.name = f"paddle ({spelling})"
        sp = self.names = PADDLE_SPELLINGS[spelling]
        head_down_root = sp.head_down.split("{")[0]
        self.head_prefixes = (head_down_root, sp.final + ".", sp.fc + ".")
        self.incre_prefixes = ("last_cls.",)
        self.classifier_prefixes = (sp.fc + ".",)

    def _unit(self, module: str) -> Tuple[str, str]:
        """PaddleClas conv+BN unit name and part ("conv"/"bn") of one of our conv or BN modules."""
        sp = self.names
        for pattern, kind in self.UNITS:
            match = pattern.match(module)
            if match:
                break
        else:
            raise CheckpointError(f"{module!r} has no PaddleClas counterpart")
        g = {k: (int(v) if v.isdigit() else v) for k, v in match.groupdict().items() if v is not None}
        part = g.pop("part", None) or ("conv" if g.pop("idx01") == 0 else "bn")
        g.update({f"{k}1": v + 1 for k, v in list(g.items()) if isinstance(v, int)})
        if "s" in g:
            g["module"] = sp.module.format(**g)
        if kind == "stem":
            return sp.stem.format(**g), part
        if kind in ("layer1", "layer1_down", "incre", "incre_down"):
            root = sp.layer1_block if kind.startswith("layer1") else sp.incre
            conv = "conv_down" if kind.endswith("_down") else f"conv{g['c']}"
            return f"{root.format(**g)}.{conv}", part
        if kind == "transition":
            return (sp.first_transition if g["t"] == 1 else sp.later_transition).format(**g), part
        if kind == "block":
            return f"{sp.block.format(**g)}.conv{g['c']}", part
        if kind in ("fuse_up", "fuse_down"):
            # Stage s of HRNet has s branches.
            g["idx"] = fuse_term_index(g["s"], g["i"], g["j"], g.get("k", 0))
            return (sp.fuse_up if kind == "fuse_up" else sp.fuse_down).format(**g), part
        if kind == "head_down":
            return sp.head_down.format(**g), part
        return sp.final, part

    def key_of(self, key: str) -> Optional[str]:
        module, _, name = key.rpartition(".")
        if module == "classifier":
            return f"{self.names.fc}.{name}"
        if HEAD_CONV_BIAS.match(key) or name == "num_batches_tracked":
            return None
        unit, part = self._unit(module)
        if part == "conv":
            return f"{unit}.{self.names.conv}.{name}"
        return f"{unit}.{self.names.bn}.{BN_FIELDS[name]}"

    def to_ours(self, key: str, value: torch.Tensor) -> torch.Tensor:
        return value.t().contiguous() if key == "classifier.weight" else value

    from_ours = to_ours  # the [in, out] <-> [out, in] transpose is its own inverse



def to_paddle(state_dict: Mapping[str, torch.Tensor], spelling: str = "legendary") -> Dict[str, np.ndarray]:
    """Our (timm) state dict as PaddleClas names and numpy arrays: ``pickle.dump(to_paddle(sd), f)`` writes a
    ``.pdparams`` file PaddleClas's ``HRNet_W*_C`` loads. Head-conv biases are folded into BN, BN batch
    counters dropped, ``fc.weight`` transposed to [in, out]. ``spelling`` picks the PaddleClas version's names
    (``legendary``, ``legendary_v1``, ``model_zoo``)."""
    return {k: v.detach().cpu().numpy() for k, v in export(state_dict, PaddleFormat(spelling)).items()}
