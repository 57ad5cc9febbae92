"""A Hugging Face hub cache written by the tests: what hf_hub_download reads offline, without the network."""
from __future__ import annotations

from pathlib import Path


def seed_hub_cache(hub: Path, repo: str, state_dict) -> Path:
    """The cache layout (refs/main names a snapshot holding model.safetensors) for ``repo`` under ``hub``, holding
    ``state_dict``; returns the file's path."""
    from safetensors.torch import save_file
    commit = "0" * 40
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    path = folder / "snapshots" / commit / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    return path
