"""Reading checkpoint files without running code from them, and unwrapping the state dict inside.

``torch.load(weights_only=True)`` for PyTorch files (zip entries' checksums verified first) and an unpickler that
only builds numpy arrays for PaddlePaddle ``.pdparams``.
"""
from __future__ import annotations

import importlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Union

import numpy as np
import torch

from .base import CheckpointError


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
    """The state dict inside a checkpoint: the ``state_dict`` or ``model`` entry of a training checkpoint (an
    OpenMMLab one's ``meta`` and ``optimizer`` left aside), with a DataParallel ``module.`` prefix removed, numpy
    arrays made tensors, and PaddlePaddle bookkeeping entries (``…@@``) dropped. The official segmentation
    training saves its ``FullModel`` (network + loss): its ``model.`` prefix is removed and the loss's class
    weights (``loss.*``) dropped."""
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
                                  f"{summarise(list(checkpoint))}")
        state[key] = value
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("model.") for k in state) and all(k.startswith(("model.", "loss.")) for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    return state


def summarise(keys: Sequence[str], limit: int = 8) -> str:
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
