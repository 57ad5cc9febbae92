"""The evaluation loop: every model under evaluation scored on every image of this process's shard in one pass,
so the top-1 agreement compares the models' predictions image by image.

It knows nothing of ranks or of the command line: ``sharding`` sums its counts over the ranks and ``report``
turns them into percentages.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import torch

from ..imagefolder import normalize
from .candidates import DTYPES, Candidate

TOP5 = 5


@dataclass
class ModelScore:
    """Counts for one model over the evaluated images (summed over ranks once reduced)."""
    correct_top1: int = 0
    correct_top5: int = 0  # among the min(5, num_classes) best classes
    forward_s: float = 0.0  # time in forward, synchronised; the slowest rank's once reduced


@dataclass
class EvalResult:
    """Everything one evaluation measured."""
    images: int = 0                      # images read and scored
    skipped: List[int] = field(default_factory=list)  # sample indices of unreadable images
    scores: Dict[str, ModelScore] = field(default_factory=dict)
    same_top1: int = 0                   # images whose top-1 is the same for the first two candidates
    wall_s: float = 0.0                  # loop time without the warm-up forwards; slowest rank once reduced
    top5_k: int = TOP5                   # the "top-5" k: 5, or the class count when the model has fewer


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(candidates: Sequence[Candidate], loader: torch.utils.data.DataLoader, device: torch.device,
             num_classes: int, progress: bool = False) -> EvalResult:
    """Scores every candidate on every image the loader yields (this process's shard).

    The loader yields (uint8 images (B, 3, H, W), labels (B,), sample indices (B,), decoded ok (B,)). Images
    that did not decode are left out and their indices recorded. Each candidate gets one untimed warm-up
    forward on the first batch (kernel compilation, autotuning, graph capture) so images/s is steady-state.
    """
    from tqdm import tqdm

    k = min(TOP5, num_classes)
    result = EvalResult(scores={c.name: ModelScore() for c in candidates}, top5_k=k)
    bar = tqdm(total=len(loader.sampler), unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    warm_up_s, warmed = 0.0, False
    start = time.perf_counter()
    for images, labels, indices, ok in loader:
        bar.update(len(indices))
        result.skipped.extend(indices[~ok].tolist())
        if not bool(ok.any()):
            continue
        if not bool(ok.all()):  # indexing copies, and the copy is not in pinned memory: only when needed
            images, labels = images[ok], labels[ok]
        x = normalize(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        if not warmed:
            warm_start = time.perf_counter()
            for c in candidates:
                c.module(x.to(DTYPES[c.dtype]))
            _synchronize(device)
            warm_up_s, warmed = time.perf_counter() - warm_start, True
        top1s = []
        for c in candidates:
            t0 = time.perf_counter()
            logits = c.module(x.to(DTYPES[c.dtype])).float()
            _synchronize(device)
            score = result.scores[c.name]
            score.forward_s += time.perf_counter() - t0
            top = logits.topk(k, dim=1).indices                     # (B, k), best first
            score.correct_top1 += int((top[:, 0] == labels).sum())
            score.correct_top5 += int((top == labels[:, None]).any(dim=1).sum())
            top1s.append(top[:, 0])
        if len(top1s) == 2:
            result.same_top1 += int((top1s[0] == top1s[1]).sum())
        result.images += int(labels.numel())
    result.wall_s = time.perf_counter() - start - warm_up_s
    bar.close()
    return result
