"""Model names, their stage layouts, and ``create_model``.

The layouts are the published HRNet-Image-Classification configs (also timm's ``cfg_cls``): a Bottleneck
stage 1 and BasicBlock stages 2-4 with branch widths C, 2C, 4C, 8C.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

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


def list_models() -> List[str]:
    """The canonical model names (timm's), small to large."""
    return list(CONFIGS)[:2] + [f"hrnet_w{w}" for w in (18, 30, 32, 40, 44, 48, 64)] + list(SSLD)


def resolve_name(name: str) -> str:
    """Canonical name for ``name`` or one of its aliases (case-insensitive); ValueError listing the valid
    names otherwise."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key in CONFIGS or key in SSLD:
        return key
    raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())} "
                     f"(aliases such as 'HRNet_W18_C' and 'HRNet-W18' are accepted too)")


def create_model(name: str, num_classes: int = 1000, features_only: bool = False,
                 out_indices: Optional[Sequence[int]] = None, feature_location: str = "incre",
                 in_chans: int = 3) -> HighResolutionNet:
    """Builds a reference HRNet by name, with freshly initialised weights.

    ``features_only=True`` returns the multi-scale feature maps (stem, then the four branches; the incre-module
    outputs by default, or the raw branch outputs with ``feature_location=""``), as timm does.
    """
    key = resolve_name(name)
    if out_indices is not None and not isinstance(out_indices, (list, tuple, range)):
        raise TypeError(f"out_indices must be a sequence of feature indices within 0..4, e.g. (1, 2, 3, 4); "
                        f"got {out_indices!r}")
    cfg = CONFIGS[SSLD.get(key, key)]
    return HighResolutionNet(cfg, num_classes=num_classes, in_chans=in_chans, head_conv_bias=key not in SSLD,
                             features_only=features_only, feature_location=feature_location,
                             out_indices=tuple(out_indices) if out_indices is not None else (0, 1, 2, 3, 4))
