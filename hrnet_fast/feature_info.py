"""``feature_info`` of a multi-scale feature extractor, with timm's ``FeatureInfo`` interface.

Code written for timm's ``features_only`` models (detection and pose necks, segmentation heads) sizes itself
from ``model.feature_info.channels()`` / ``.reduction()``; hrnet_fast's models answer the same calls without
depending on timm.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

Index = Optional[Union[int, Sequence[int]]]


class FeatureInfo:
    """One dict per feature map the model can return (``num_chs``, ``reduction``, ``module``), and the indices
    of those it does return (``out_indices``). A query without ``idx`` answers for ``out_indices``; an int or a
    sequence picks among all of them, as timm's does."""

    def __init__(self, info: Sequence[Dict], out_indices: Sequence[int]):
        self.info = [dict(d, index=i) for i, d in enumerate(info)]
        self.out_indices = tuple(out_indices)

    def get(self, key: str, idx: Index = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def get_dicts(self, keys: Optional[Sequence[str]] = None, idx: Index = None):
        def pick(d: Dict) -> Dict:
            return dict(d) if keys is None else {k: d[k] for k in keys}
        if isinstance(idx, int):
            return pick(self.info[idx])
        return [pick(self.info[i]) for i in (self.out_indices if idx is None else idx)]

    def channels(self, idx: Index = None) -> Union[int, List[int]]:
        return self.get("num_chs", idx)

    def reduction(self, idx: Index = None) -> Union[int, List[int]]:
        return self.get("reduction", idx)

    def module_name(self, idx: Index = None) -> Union[str, List[str]]:
        return self.get("module", idx)

    def __getitem__(self, item: int) -> Dict:
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(out_indices={self.out_indices}, info={self.info})"
