"""An HR module's branches (and its output fusions) on CUDA streams of their own while a CUDA graph is captured,
so that the replayed graph runs them at once (``convert(..., parallel_branches=True)`` on CUDA).

At batch 1 the low-resolution branches are small convs that fill few SMs, one after another. Captured on separate
streams, they become parallel paths of the graph. The pattern is the fork/join CUDA graphs take from streams:

  fork: an event recorded on the capture stream, waited on by each part's stream before its first kernel;
  join: an event recorded on each part's stream after its last kernel, waited on by the capture stream before
        anything reads the parts' outputs.

Every tensor a part reads or writes stays referenced until after the join, so the caching allocator never hands a
block to one stream while another may still use it. Only during capture: eager CUDA calls and the warm-up runs stay
on one stream (their launches are not concurrent work anyway), and the default (``parallel_branches=None``) is
serial on CUDA until a GPU run of benchmarks/gpu_check.sh decides otherwise (docs/convert.md, "Branch-parallel
schedule").
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple, TypeVar

import torch

T = TypeVar("T")

_streams: Dict[Tuple[torch.device, int], "torch.cuda.Stream"] = {}


def part_stream(device: torch.device, index: int) -> "torch.cuda.Stream":
    """The stream part ``index`` of a module is captured on (one per device and index, shared by all modules:
    a module's parts are joined before the next module forks)."""
    key = (device, index)
    stream = _streams.get(key)
    if stream is None:
        stream = _streams[key] = torch.cuda.Stream(device=device)
    return stream


def on_cuda(x: torch.Tensor) -> bool:
    return x.is_cuda


def concurrent(parallel_branches, x: torch.Tensor) -> bool:
    """Whether a module with this setting captures its parts on their own streams for input ``x``."""
    return parallel_branches is True and on_cuda(x) and torch.cuda.is_current_stream_capturing()


def run_parts(parts: Sequence[Callable[[], T]], device: torch.device) -> List[T]:
    """What each of ``parts`` returns, each run on its own stream between a fork and a join on the current
    (capture) stream."""
    main = torch.cuda.current_stream(device)
    fork = torch.cuda.Event()
    fork.record(main)
    outs, joins = [], []
    for i, part in enumerate(parts):
        stream = part_stream(device, i)
        stream.wait_event(fork)
        with torch.cuda.stream(stream):
            outs.append(part())
        done = torch.cuda.Event()
        done.record(stream)
        joins.append(done)
    for done in joins:
        main.wait_event(done)
    return outs
