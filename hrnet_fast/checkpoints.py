"""Load HRNet classification checkpoints of every published format into the reference models, and export them.

Formats, detected from the keys:

``timm``
    timm and the official HRNet-Image-Classification release: the names of :mod:`hrnet_fast.models`.
``mmpretrain``
    mmpretrain / MMClassification: ``backbone.*`` holds our backbone names unchanged (mmcv names BN layers
    ``bn1``, ``bn2``…, as torchvision does); the head is the ``HRFuseScales`` neck and a linear head:
    ``neck.0.increase_layers.*`` (our ``incre_modules``), ``neck.0.downsample_layers.{i}.conv|bn``
    (``downsamp_modules.{i}.0|1``), ``neck.0.final_layer.conv|bn`` (``final_layer.0|1``), ``head.fc``
    (``classifier``).
``paddle``
    PaddleClas ``.pdparams`` (a pickle of a dict of numpy arrays plus bookkeeping entries such as
    ``StructuredToParameterName@@``). Names follow the PaddleClas module tree (``conv_layer1_1``, ``layer1``,
    ``conv_tr1_1``, ``st2.stage_func_list.{m}.basic_block_list.{branch}.{block}``,
    ``…fuse_func.residual_func_list.{k}`` (the fusion terms flattened in order), ``last_cls.func_list``,
    ``cls_head_conv_list``, ``conv_last``, ``fc``); each conv+BN pair is ``<unit>.conv`` / ``<unit>.bn`` with BN
    statistics ``_mean`` / ``_variance``; ``fc.weight`` is stored [in, out]. Three spellings are read: the current
    ``legendary_models`` one, its first version (``_conv``/``_batch_norm``, ``tr1_1``, ``out``) and the older
    ``model_zoo`` one (``la1.bb_layer2_1``, ``tr1.transition_tr1_layer_1``, ``stage_st2_1``…).

mmpretrain and PaddleClas head convs have no bias. Loading them into a model whose head convs have one (every
variant but the ssld ones) sets that bias to zero, which is exact. Exporting from such a model folds the bias
into the following BN's running mean (``BN(conv(x) + b)`` has mean ``mean - b``), exact up to fp32 rounding.

For ``features_only`` models the classification-head entries (``downsamp_modules``, ``final_layer``,
``classifier`` and their counterparts; the ``incre_modules`` too when ``feature_location=""``) of a
classification checkpoint are ignored, as timm does.

Files are read without running code from them: ``torch.load(weights_only=True)`` for PyTorch files and an
unpickler that only builds numpy arrays for ``.pdparams``.
"""
from __future__ import annotations

import functools
import importlib
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .registry import CONFIGS, SSLD, create_model, list_models


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that does not fit the model."""


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did. Key names are the checkpoint's own (its format's names)."""

    format: str
    ignored_keys: List[str] = field(default_factory=list)
    missing_keys: List[str] = field(default_factory=list)
    unexpected_keys: List[str] = field(default_factory=list)
    # checkpoint key -> (its shape in the checkpoint, in our layout; the model's shape)
    mismatched_keys: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=dict)


# Head convs that carry a bias in timm/official checkpoints and none in mmpretrain/PaddleClas ones.
HEAD_CONV_BIAS = re.compile(r"^(downsamp_modules\.\d+|final_layer)\.0\.bias$")


# --------------------------------------------------------------------------------------------------- formats


class Format:
    """Our names <-> one checkpoint format's names. Subclasses define ``key_of``; every mapping goes from our
    key to theirs, so loading builds the reverse table from the model's own keys."""

    name = ""
    # Prefixes (in the format's names) of the classification head, and of the incre modules.
    head_prefixes: Tuple[str, ...] = ()
    incre_prefixes: Tuple[str, ...] = ()
    classifier_prefixes: Tuple[str, ...] = ()

    def key_of(self, key: str) -> Optional[str]:
        """The format's name for our ``key``, or None where the format has no such entry."""
        raise NotImplementedError

    def to_ours(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """The format's value of our ``key`` in our layout."""
        return value

    def from_ours(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """Our value of ``key`` in the format's layout."""
        return value


class TimmFormat(Format):
    name = "timm"
    head_prefixes = ("downsamp_modules.", "final_layer.", "classifier.")
    incre_prefixes = ("incre_modules.",)
    classifier_prefixes = ("classifier.",)

    def key_of(self, key: str) -> Optional[str]:
        return key


class MMPretrainFormat(Format):
    name = "mmpretrain"
    head_prefixes = ("neck.0.downsample_layers.", "neck.0.final_layer.", "head.")
    incre_prefixes = ("neck.0.increase_layers.",)
    classifier_prefixes = ("head.fc.",)
    # (our key, mmpretrain key template); the first match wins; None: no mmpretrain entry.
    RULES = [(re.compile(pattern), template) for pattern, template in [
        (r"^incre_modules\.(.*)$", r"neck.0.increase_layers.\1"),
        (HEAD_CONV_BIAS.pattern, None),
        (r"^downsamp_modules\.(\d+)\.0\.(.*)$", r"neck.0.downsample_layers.\1.conv.\2"),
        (r"^downsamp_modules\.(\d+)\.1\.(.*)$", r"neck.0.downsample_layers.\1.bn.\2"),
        (r"^final_layer\.0\.(.*)$", r"neck.0.final_layer.conv.\1"),
        (r"^final_layer\.1\.(.*)$", r"neck.0.final_layer.bn.\1"),
        (r"^classifier\.(.*)$", r"head.fc.\1"),
        (r"^(.*)$", r"backbone.\1"),
    ]]

    def key_of(self, key: str) -> Optional[str]:
        for pattern, template in self.RULES:
            match = pattern.match(key)
            if match:
                return None if template is None else match.expand(template)
        raise AssertionError("the last rule matches every key")


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


def detect_format(state_dict: Mapping[str, object]) -> Format:
    """The format of a state dict (already unwrapped), from its keys."""
    keys = set(state_dict)
    if any(k.startswith("backbone.") for k in keys):
        return MMPretrainFormat()
    if "conv_layer1_1.conv.weight" in keys:
        return PaddleFormat("legendary")
    if "conv_layer1_1._conv.weight" in keys:
        return PaddleFormat("model_zoo" if any(k.startswith("la1.") for k in keys) else "legendary_v1")
    return TimmFormat()


# ------------------------------------------------------------------------------------------------ reading


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays (what PaddlePaddle writes to .pdparams) and refuses everything else, so a
    crafted file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("collections", "OrderedDict"),
               ("_codecs", "encode")}  # protocol 2 pickles bytes (the array data) as _codecs.encode(str, "latin1")

    def find_class(self, module: str, name: str):
        canonical = module.replace("numpy._core", "numpy.core")
        if (canonical, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a .pdparams file holds numpy arrays "
                                         f"only")
        # numpy 2 moved numpy.core to numpy._core (the old path still imports, with a warning).
        for candidate in (module.replace("numpy.core", "numpy._core"), module):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot find {module}.{name} in this numpy")


def _read_pdparams(path: Path) -> Dict[str, object]:
    with open(path, "rb") as f:
        obj = _NumpyOnlyUnpickler(f).load()
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"holds a {type(obj).__name__}, not a dict of arrays")
    return obj


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise CheckpointError(
                f"{path} holds Python objects besides tensors, so it was not loaded (weights_only=True keeps a "
                f"checkpoint from running code). If you trust the file: "
                f"sd = torch.load(path, weights_only=False), then load_checkpoint(model, sd). Details: {err}"
            ) from err
        raise CheckpointError(f"{path} is truncated or corrupted: {err}") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is truncated or corrupted, or not a PyTorch checkpoint: {err}") from err


def _check_zip_checksums(path: Path) -> None:
    """torch.load does not verify the CRC-32 of a zip checkpoint's entries, so bytes flipped on disk or in transfer
    would load as wrong weights without an error; zipfile verifies them (reading the file once more)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f"{path} is truncated or corrupted: {err}") from err
    if bad is not None:
        raise CheckpointError(f"{path} is corrupted: the checksum of its entry {bad!r} does not match its data (the "
                              f"file changed after it was saved); download or save it again")


def read_checkpoint(path: Union[str, os.PathLike]) -> Mapping[str, object]:
    """Reads a checkpoint file: a PyTorch file (zip or legacy pickle; ``weights_only=True``) or a PaddlePaddle
    ``.pdparams`` pickle (numpy arrays only). Returns what the file holds, unwrapped by ``load_checkpoint``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    if magic.startswith(b"PK"):  # torch.save's zip format
        _check_zip_checksums(path)
        return _read_torch(path)
    if magic[0] != 0x80:  # every binary pickle (protocol 2+) starts with PROTO
        raise CheckpointError(f"{path} is neither a PyTorch checkpoint nor a PaddlePaddle .pdparams file")
    # A pickle: a .pdparams dict of arrays, or PyTorch's legacy (pre-1.6) format, which starts with a pickled
    # magic number rather than a dict.
    try:
        return _read_pdparams(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as paddle_err:
        if path.suffix == ".pdparams":
            raise CheckpointError(f"{path} cannot be read as a .pdparams file (a pickle of numpy arrays): "
                                  f"{paddle_err}") from paddle_err
        return _read_torch(path)


def unwrap(checkpoint: Mapping[str, object]) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: the ``state_dict`` or ``model`` entry of a training checkpoint, with a
    DataParallel ``module.`` prefix removed, numpy arrays made tensors, and PaddlePaddle bookkeeping entries
    (``…@@``) dropped."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"a checkpoint must hold a dict of tensors, this one holds a "
                              f"{type(checkpoint).__name__}")
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    state: Dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        if isinstance(key, str) and key.endswith("@@"):
            continue
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor; entries: "
                                  f"{_summarise(list(checkpoint))}")
        state[key] = value
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# ------------------------------------------------------------------------------------------------ loading


def _summarise(keys: Sequence[str], limit: int = 8) -> str:
    """Keys grouped by their pattern with indices replaced by '#', long lists truncated."""
    if len(keys) <= 6:
        return ", ".join(keys)
    groups: Dict[str, List[str]] = {}
    for key in keys:
        groups.setdefault(re.sub(r"(?<=[._])\d+(?=[._]|$)", "#", key), []).append(key)
    parts = [members[0] if len(members) == 1 else f"{pattern} ({len(members)} keys, e.g. {members[0]})"
             for pattern, members in groups.items()]
    more = f", … and {len(parts) - limit} more groups" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


@functools.lru_cache(maxsize=None)
def _variant_shapes(name: str) -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):
        model = create_model(name)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def identify_variant(state_dict: Mapping[str, torch.Tensor], fmt: Optional[Format] = None) -> List[str]:
    """Registered variants whose architecture matches a classification state dict (any format; the number of
    classes is not compared). Empty when none does."""
    fmt = fmt or detect_format(state_dict)
    width_key = fmt.key_of("transition1.0.0.weight")
    if width_key not in state_dict:
        return []
    width = state_dict[width_key].shape[0]

    def body(shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Tuple[int, ...]]:
        return {k: s for k, s in shapes.items() if not k.startswith(fmt.classifier_prefixes)}

    found = body({k: tuple(v.shape) for k, v in state_dict.items()})
    matches = []
    for name in list_models("classification"):
        if CONFIGS[SSLD.get(name, name)]["stage2"]["num_channels"][0] != width:
            continue
        expected = {fk: shape for k, shape in _variant_shapes(name).items() if (fk := fmt.key_of(k)) is not None}
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
                    strict: bool = True) -> LoadReport:
    """Loads a timm/official, mmpretrain/MMClassification or PaddleClas checkpoint (file or dict) into ``model``.

    The format is detected from the keys (module docstring). With ``strict=True`` (default) every entry must fit:
    missing, unexpected or mis-shaped entries raise one :class:`CheckpointError` naming them (and the variant the
    checkpoint looks like, when it is another one). With ``strict=False`` what fits is loaded and the rest is
    listed in the returned :class:`LoadReport`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_checkpoint expects an nn.Module, got {type(model).__name__}")
    raw = path_or_state_dict if isinstance(path_or_state_dict, Mapping) else read_checkpoint(path_or_state_dict)
    state = unwrap(raw)
    if not state:
        raise CheckpointError("the checkpoint holds no tensors")
    fmt = detect_format(state)
    report = LoadReport(format=fmt.name if not isinstance(fmt, PaddleFormat) else f"paddle ({fmt.spelling})")

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
    # Entries the format has no place for: BN batch counters (PaddleClas) and head-conv biases (mmpretrain,
    # PaddleClas), which those models do not have: zero is their exact equivalent.
    for key in no_entry:
        converted[key] = torch.zeros_like(target[key])

    problems = report.missing_keys or report.unexpected_keys or report.mismatched_keys
    if problems and strict:
        raise CheckpointError(_mismatch_message(model, state, fmt, report))
    model.load_state_dict(converted, strict=not problems)
    return report


def _mismatch_message(model: nn.Module, state: Mapping[str, torch.Tensor], fmt: Format, report: LoadReport) -> str:
    lines = [f"the checkpoint ({report.format} format) does not fit this {type(model).__name__}:"]
    for label, keys in (("missing from the checkpoint", report.missing_keys),
                        ("unexpected in the checkpoint", report.unexpected_keys),
                        ("shape mismatch", list(report.mismatched_keys))):
        if keys:
            lines.append(f"  {label} ({len(keys)}): {_summarise(keys)}")
    if report.mismatched_keys:
        examples = list(report.mismatched_keys.items())[:3]
        lines.append("  e.g. " + "; ".join(f"{k}: checkpoint {list(c)}, model {list(m)}" for k, (c, m) in examples))
    variants = identify_variant(state, fmt)
    widths = getattr(model, "stage_channels", None)
    if variants:
        lines.append(f"  The checkpoint looks like a checkpoint of {' or '.join(variants)}"
                     + (f"; this model's branch widths are {list(widths)}." if widths else "."))
    if any(k.startswith(fmt.classifier_prefixes) for k in report.mismatched_keys):
        lines.append("  The classifier size differs: build the model with the checkpoint's num_classes.")
    if report.ignored_keys:
        lines.append(f"  ignored (no such modules in a features_only model): {len(report.ignored_keys)} keys")
    lines.append("  Use strict=False to load what fits.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ export


def _fold_head_bias(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our state dict with the head-conv biases folded into the next BN's running mean and removed."""
    out = dict(state_dict)
    for key in [k for k in out if HEAD_CONV_BIAS.match(k)]:
        bias = out.pop(key)
        bn_mean = key[: -len("0.bias")] + "1.running_mean"
        out[bn_mean] = out[bn_mean] - bias
    return out


def to_mmpretrain(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our (timm) state dict in mmpretrain's names: ``torch.save({"state_dict": to_mmpretrain(sd)}, path)``
    writes a checkpoint mmpretrain's ``HRNet`` + ``HRFuseScales`` + ``LinearClsHead`` model loads. Head-conv
    biases are folded into BN (module docstring)."""
    fmt = MMPretrainFormat()
    return {fmt.key_of(k): v for k, v in _fold_head_bias(state_dict).items()}


def to_paddle(state_dict: Mapping[str, torch.Tensor], spelling: str = "legendary") -> Dict[str, np.ndarray]:
    """Our (timm) state dict as PaddleClas names and numpy arrays: ``pickle.dump(to_paddle(sd), f)`` writes a
    ``.pdparams`` file PaddleClas's ``HRNet_W*_C`` loads. Head-conv biases are folded into BN, BN batch
    counters dropped, ``fc.weight`` transposed to [in, out]. ``spelling`` picks the PaddleClas version's names
    (``legendary``, ``legendary_v1``, ``model_zoo``)."""
    fmt = PaddleFormat(spelling)
    out = {}
    for key, value in _fold_head_bias(state_dict).items():
        foreign = fmt.key_of(key)
        if foreign is not None:
            out[foreign] = fmt.from_ours(key, value).detach().cpu().numpy()
    return out
