"""What a model says about its weights (``pretrained_cfg``, timm's per-tag facts, set whether or not weights were
loaded) and loading timm's published weights, failing at once with the way out when the hub cannot be reached.

timm's hub loader, asked for a file the cache lacks while the hub is unreachable, retries for about 47 s and ends
in huggingface_hub's ``LocalEntryNotFoundError``, which names neither the model nor a local route. So before
handing over to timm, ``load_pretrained`` looks in the local hub cache and, when the file is not there, checks that
the hub answers at all (one request, ``PROBE_TIMEOUT_S``, no retries): offline (``HF_HUB_OFFLINE=1``) or
unreachable, it raises ``PretrainedUnavailable`` naming the model, the tag, the files it looked for and the two
offline routes. A cached file is loaded from the cache without asking the hub.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch.nn as nn

# Per-tag differences from timm's defaults (timm.models.hrnet.default_cfgs); tests compare the result with timm's.
TAG_CFG: Dict[str, Dict] = {
    "gluon_in1k": dict(interpolation="bicubic", license="apache-2.0"),
    "ms_in1k": {},
    "ms_aug_in1k": dict(crop_pct=0.95),
    "paddle_in1k": dict(crop_pct=0.95, test_crop_pct=1.0, test_input_size=(3, 288, 288)),
}
# What the pose and segmentation models are trained and evaluated on (COCO person crops; Cityscapes full frames).
TASK_CFG: Dict[str, Dict] = {
    "pose": dict(input_size=(3, 256, 192), num_classes=17, classifier="final_layer"),
    "segmentation": dict(input_size=(3, 1024, 2048), num_classes=19, classifier="last_layer.3"),
    # HigherHRNet W32's 512x512 COCO images (its W48 experiment takes 640); classifier: the stride-2 heatmaps.
    "bottom-up pose": dict(input_size=(3, 512, 512), num_classes=17, classifier="final_layers.1"),
    "OCR segmentation": dict(input_size=(3, 1024, 2048), num_classes=19, classifier="cls_head"),
}
# The files timm's hub loader asks for, in its order (safetensors first, then the pickle).
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
PROBE_TIMEOUT_S = 3.0
# Keys timm drops from a features_only model's cfg (timm.models.pretrained_cfg_for_features): it has no head.
HEAD_KEYS = ("num_classes", "classifier", "global_pool")


class PretrainedUnavailable(FileNotFoundError):
    """The published weights cannot be fetched (offline, hub unreachable) and are not in the local cache. A
    FileNotFoundError, as huggingface_hub's LocalEntryNotFoundError is, so code catching that still catches it."""


def _imagenet_norm() -> Dict:
    from .imagefolder import IMAGENET_MEAN, IMAGENET_STD
    return dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)


def default_cfg(name: str, task: str, tag: Optional[str], features_only: bool = False) -> Dict:
    """The ``pretrained_cfg`` a model built by ``create_model`` carries before any weights are loaded: for a
    classification model timm's entry for ``name.tag`` (``tag``: the default tag), for pose and segmentation the
    input the published models take, with ``tag`` None (timm publishes no weights for them)."""
    if task == "classification":
        cfg = dict(url="", hf_hub_id=f"timm/{name}.{tag}", architecture=name, tag=tag, custom_load=False,
                   input_size=(3, 224, 224), fixed_input_size=False, interpolation="bilinear", crop_pct=0.875,
                   crop_mode="center", **_imagenet_norm(), num_classes=1000, pool_size=(7, 7), first_conv="conv1",
                   classifier="classifier", license="mit")
        cfg.update(TAG_CFG[tag])
    else:
        cfg = dict(url="", architecture=name, tag=None, custom_load=False, fixed_input_size=False,
                   **_imagenet_norm(), first_conv="conv1", **TASK_CFG[task])
    return for_features(cfg) if features_only else cfg


def for_features(cfg: Dict) -> Dict:
    """``cfg`` without the head's keys, as timm gives a ``features_only`` model."""
    return {k: v for k, v in cfg.items() if k not in HEAD_KEYS}


def set_cfg(model: nn.Module, cfg: Dict) -> None:
    """``model.pretrained_cfg`` and its older name ``default_cfg`` (one dict, as timm sets them)."""
    model.pretrained_cfg = model.default_cfg = cfg


def _offline_routes(variant: str) -> str:
    stem = variant.split(".")[0]
    return (f"Load a local copy instead: create_model({variant!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='{stem}.pth')) (timm's format, .pth or .safetensors), or "
            f"create_model({stem!r}) then hrnet_fast.load_checkpoint(model, path) (any supported format: official, "
            f"mmpretrain, PaddleClas ...).")


def _cached_file(repo_id: str) -> Optional[str]:
    """The first of ``HUB_FILENAMES`` of ``repo_id`` in the local hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache
    for filename in HUB_FILENAMES:
        path = try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str):  # None (not cached) or a marker that the hub has no such file
            return path
    return None


def hub_unreachable(repo_id: str) -> Optional[str]:
    """Why the Hugging Face hub cannot serve ``repo_id`` right now (offline mode, or no answer within
    ``PROBE_TIMEOUT_S``), or None when it answers. Any HTTP answer counts: a missing file is then timm's to
    report. huggingface_hub's own client is used, so its endpoint (``HF_ENDPOINT``) and proxies apply."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 is set"
    url = f"{constants.ENDPOINT}/{repo_id}/resolve/main/{HUB_FILENAMES[0]}"  # what timm's loader asks for first
    try:
        get_session().head(url, timeout=PROBE_TIMEOUT_S)
    except Exception as e:  # any failure to get an answer: DNS, refused, timeout, proxy
        return f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached ({type(e).__name__}: {e})"
    return None


def local_source(cfg: Dict, variant: str) -> Optional[str]:
    """Where to load ``cfg``'s hub weights from without the network: the cached file when the hub is offline or
    unreachable (None when the hub answers: timm fetches as usual). PretrainedUnavailable when neither works."""
    repo_id = cfg["hf_hub_id"]
    try:
        cached = _cached_file(repo_id)
    except ImportError as e:
        raise PretrainedUnavailable(
            f"{variant}: pretrained=True downloads timm/{variant} from the Hugging Face hub through "
            f"huggingface_hub, which is not installed (pip install huggingface_hub). {_offline_routes(variant)}"
        ) from e
    why = hub_unreachable(repo_id)
    if why is None:
        return None
    if cached is not None:
        return cached
    from huggingface_hub import constants
    raise PretrainedUnavailable(
        f"{variant}: cannot fetch its pretrained weights (model {variant.split('.')[0]}, tag {cfg['tag']}): {why}, "
        f"and {' / '.join(HUB_FILENAMES)} of {repo_id} is not in the local hub cache ({constants.HF_HUB_CACHE}). "
        f"{_offline_routes(variant)}")


def _features_filter(state_dict: Dict, model: nn.Module) -> Dict:
    """timm's state dict without the entries a features_only model has no modules for (as timm drops them)."""
    own = model.state_dict()
    return {k: v for k, v in state_dict.items() if k in own or not model.features_only}


def load_pretrained(model: nn.Module, name: str, tag: Optional[str] = None,
                    pretrained_cfg_overlay: Optional[Dict] = None) -> None:
    """Loads timm's published weights for ``name`` (``tag``: which of them; None: timm's default) through timm's
    own machinery: its pretrained config, download and hub cache, classifier and input-channel adaptation.
    ``pretrained_cfg_overlay=dict(file=PATH)`` loads a local copy instead, as in ``timm.create_model``. Offline or
    with the hub unreachable, a cached copy is loaded, else PretrainedUnavailable says what to do. Sets
    ``model.pretrained_cfg`` (and ``default_cfg``) as timm does."""
    try:
        from timm.models import load_pretrained as timm_load_pretrained, resolve_pretrained_cfg
    except ImportError as e:
        raise ImportError(f"pretrained=True fetches the published weights through timm, which is not installed "
                          f"(pip install timm); or load a file with hrnet_fast.load_checkpoint ({e})") from e
    cfg = resolve_pretrained_cfg(name if tag is None else f"{name}.{tag}",
                                 pretrained_cfg_overlay=pretrained_cfg_overlay).to_dict()
    variant = f"{name}.{cfg['tag']}"
    if not cfg.get("file") and cfg.get("hf_hub_id"):
        cached = local_source(cfg, variant)
        if cached is not None:
            cfg["file"] = cached
    timm_load_pretrained(model, pretrained_cfg=cfg, num_classes=model.num_classes, in_chans=model.in_chans,
                         filter_fn=_features_filter, strict=True)
    set_cfg(model, for_features(cfg) if getattr(model, "features_only", False) else cfg)
