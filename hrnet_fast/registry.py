"""Model names, their stage layouts, and ``create_model``.

The layouts are the published HRNet-Image-Classification configs (also timm's ``cfg_cls``): a Bottleneck
stage 1 and BasicBlock stages 2-4 with branch widths C, 2C, 4C, 8C.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

from .models import HighResolutionNet


def _stage(modules: int, blocks: Sequence[int], channels: Sequence[int], block: str = "BASIC") -> Dict:
    return dict(num_modules=modules, num_branches=len(channels), block_type=block,
                num_blocks=tuple(blocks), num_channels=tuple(channels))


def _full(width: int) -> Dict:
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
    **{f"hrnet_w{w}": _full(w) for w in (18, 30, 32, 40, 44, 48, 64)},
}
# The ssld (PaddleClas distilled) weights use the W18/W48 layouts with bias-free head convs.
SSLD = {"hrnet_w18_ssld": "hrnet_w18", "hrnet_w48_ssld": "hrnet_w48"}

ALIASES: Dict[str, str] = {}
for _w in (18, 30, 32, 40, 44, 48, 64):
    ALIASES[f"hrnet_w{_w}_c"] = f"hrnet_w{_w}"      # PaddleClas: HRNet_W18_C
    ALIASES[f"hrnet-w{_w}"] = f"hrnet_w{_w}"        # MMClassification: HRNet-W18
ALIASES["hrnet-w18 (ssld)"] = "hrnet_w18_ssld"
ALIASES["hrnet-w48 (ssld)"] = "hrnet_w48_ssld"
ALIASES["hrnet_w18_c_ssld"] = "hrnet_w18_ssld"
ALIASES["hrnet_w48_c_ssld"] = "hrnet_w48_ssld"


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


def list_models() -> List[str]:
    """The canonical model names (timm's), small to large."""
    return list(CONFIGS)[:2] + [f"hrnet_w{w}" for w in (18, 30, 32, 40, 44, 48, 64)] + list(SSLD)


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
    if key not in CONFIGS and key not in SSLD:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())} (short forms such "
                         f"as 'w18', the seed tables' names such as 'HRNet_W18_C' and 'HRNet-W18', and timm's tagged "
                         f"names such as 'hrnet_w18.ms_aug_in1k' are accepted too)")
    if not tag:
        return key, None
    if tag not in PRETRAINED_TAGS[key]:
        raise ValueError(f"{name!r}: {key} has no pretrained tag {tag!r}; its tags: "
                         f"{', '.join(key + '.' + t for t in PRETRAINED_TAGS[key])}")
    return key, tag


def resolve_name(name: str) -> str:
    """The canonical name for ``name`` in any spelling ``parse_name`` accepts."""
    return parse_name(name)[0]


def _features_filter(state_dict: Dict, model: HighResolutionNet) -> Dict:
    """timm's state dict without the entries a features_only model has no modules for (as timm drops them)."""
    own = model.state_dict()
    return {k: v for k, v in state_dict.items() if k in own or not model.features_only}


def load_pretrained(model: HighResolutionNet, name: str, tag: Optional[str] = None,
                    pretrained_cfg_overlay: Optional[Dict] = None) -> None:
    """Loads timm's published weights for ``name`` (``tag``: which of them; None: timm's default) through timm's
    own machinery: its pretrained config, download and hub cache, classifier and input-channel adaptation.
    ``pretrained_cfg_overlay=dict(file=PATH)`` loads a local copy instead, as in ``timm.create_model``. Sets
    ``model.pretrained_cfg`` (and ``default_cfg``) as timm does."""
    try:
        from timm.models import load_pretrained as timm_load_pretrained, resolve_pretrained_cfg
    except ImportError as e:
        raise ImportError(f"pretrained=True fetches the published weights through timm, which is not installed "
                          f"(pip install timm); or load a file with hrnet_fast.load_checkpoint ({e})") from e
    variant = name if tag is None else f"{name}.{tag}"
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg_overlay=pretrained_cfg_overlay).to_dict()
    timm_load_pretrained(model, pretrained_cfg=cfg, num_classes=model.num_classes, in_chans=model.in_chans,
                         filter_fn=_features_filter, strict=True)
    model.pretrained_cfg = model.default_cfg = cfg


def create_model(name: str, num_classes: int = 1000, features_only: bool = False,
                 out_indices: Optional[Sequence[int]] = None, feature_location: str = "incre",
                 in_chans: int = 3, pretrained: bool = False,
                 pretrained_cfg_overlay: Optional[Dict] = None) -> HighResolutionNet:
    """Builds a reference HRNet by name (any spelling ``parse_name`` accepts), freshly initialised or, with
    ``pretrained=True``, with timm's published weights (``load_pretrained``; a tagged name picks which).

    ``features_only=True`` returns the multi-scale feature maps (stem, then the four branches; the incre-module
    outputs by default, or the raw branch outputs with ``feature_location=""``), as timm does.
    """
    key, tag = parse_name(name)
    if out_indices is not None and not isinstance(out_indices, (list, tuple, range)):
        raise TypeError(f"out_indices must be a sequence of feature indices within 0..4, e.g. (1, 2, 3, 4); "
                        f"got {out_indices!r}")
    if pretrained_cfg_overlay is not None and not pretrained:
        raise ValueError("pretrained_cfg_overlay only applies with pretrained=True")
    cfg = CONFIGS[SSLD.get(key, key)]
    model = HighResolutionNet(cfg, num_classes=num_classes, in_chans=in_chans, head_conv_bias=key not in SSLD,
                              features_only=features_only, feature_location=feature_location,
                              out_indices=tuple(out_indices) if out_indices is not None else (0, 1, 2, 3, 4))
    if pretrained:
        load_pretrained(model, key, tag, pretrained_cfg_overlay)
    return model
