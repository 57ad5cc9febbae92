"""Evaluation under torchrun: this process's shard of the images, and the counts summed back over the ranks.

Each rank takes the images r, r+N, r+2N, ... with no padding duplicates, so the reduced figures are exactly those
of one process whatever the number of processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch
import torch.distributed as dist

from .errors import UserError
from .scoring import EvalResult, ModelScore


@dataclass(frozen=True)
class Shard:
    """This process's place in a torchrun launch (rank 0 of 1 when not launched by torchrun)."""
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class StridedShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + N, rank + 2N, ... of a dataset of ``size``: the ranks' shards partition the dataset
    exactly, with no padding duplicates (unlike DistributedSampler), so summed counts equal one process's."""

    def __init__(self, size: int, shard: Shard):
        self.indices = range(shard.rank, size, shard.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def init_distributed(device: torch.device) -> tuple[Shard, torch.device]:
    """Joins the torchrun process group when WORLD_SIZE > 1 (NCCL for CUDA, gloo for CPU); each rank takes the
    GPU of its LOCAL_RANK. Returns this process's shard and the device it runs on."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Shard(), device
    if not dist.is_available():
        raise UserError("launched with WORLD_SIZE > 1, but this torch build has no torch.distributed")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Shard(dist.get_rank(), dist.get_world_size()), device


def reduce_result(result: EvalResult, shard: Shard, device: torch.device) -> EvalResult:
    """Sums the counts over the ranks, takes the slowest rank's times, and gathers the skipped indices, so every
    rank ends with the figures of the whole dataset."""
    if not shard.distributed:
        return result
    # NCCL reduces CUDA tensors only; gloo reduces CPU ones.
    names = list(result.scores)
    counts = torch.tensor([result.images, result.same_top1]
                          + [n for s in result.scores.values() for n in (s.correct_top1, s.correct_top5)],
                          dtype=torch.int64, device=device)
    times = torch.tensor([result.wall_s] + [s.forward_s for s in result.scores.values()],
                         dtype=torch.float64, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)
    skipped: List[Optional[List[int]]] = [None] * shard.world_size
    dist.all_gather_object(skipped, result.skipped)
    counts_list, times_list = counts.tolist(), times.tolist()
    scores = {name: ModelScore(counts_list[2 + 2 * i], counts_list[3 + 2 * i], times_list[1 + i])
              for i, name in enumerate(names)}
    return EvalResult(images=counts_list[0], skipped=sorted(i for part in skipped for i in part), scores=scores,
                      same_top1=counts_list[1], wall_s=times_list[0], top5_k=result.top5_k)
