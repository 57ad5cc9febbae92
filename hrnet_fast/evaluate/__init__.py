"""``hrnet-fast eval``: top-1/top-5 on a folder of validation images, the reference model beside ``convert()``.

    hrnet-fast eval --model hrnet_w18 --checkpoint w18.pth --data /data/imagenet/val
    hrnet-fast eval --model hrnet_w18_ssld --checkpoint ssld.pdparams --data val --resize 288 --crop 288 --dtype fp16
    torchrun --nproc_per_node 8 -m hrnet_fast eval --model hrnet_w48 --checkpoint w48.pth --data val --json w48.json

One pass over the images feeds both models, so the top-1 agreement compares their predictions image by image.
Under torchrun each rank evaluates the images r, r+N, r+2N, ... (no padding duplicates) and the counts are
summed, so any number of processes gives exactly the figures of one.

Unreadable images (corrupt, truncated, not an image) are skipped, counted and listed in the report and the JSON;
the accuracies are over the images that were read (none read at all is an error). Everything the user can get
wrong (paths, sizes, model name, a checkpoint for another variant) is an error message without a traceback and
exit status 2.

``--task`` picks what is evaluated (``options.TASKS``): classification (default, this package) or ``seg``
(``hrnet_fast.segment.evaluate``: mIoU, pixel accuracy and per-class IoU against ground-truth masks).

The package, by layer:
    errors       UserError: a problem with the input, reported without a traceback
    options      the command's options and the checks that need neither images nor models
    samples      the images and labels to evaluate, checked against the class count
    candidates   the reference with its checkpoint and convert() of it, each with its dtype and backend
    scoring      the evaluation loop: top-1/top-k counts and forward times of every candidate
    sharding     torchrun: this process's shard of the images, and the counts reduced over the ranks
    report       the JSON report and the Markdown table
    command      ``run(args)`` and ``main(args)``
"""
from .candidates import DTYPES, Candidate, build_converted, build_reference, checkpoint_advice, describe_backend
from .command import main, progress_enabled, run
from .errors import UserError
from .options import add_arguments, check_arguments, resolve_device
from .report import format_report, report_dict
from .samples import load_samples
from .scoring import TOP5, EvalResult, ModelScore, evaluate
from .sharding import Shard, StridedShardSampler, init_distributed, reduce_result

__all__ = ["main", "run", "add_arguments", "progress_enabled", "UserError", "check_arguments", "resolve_device",
           "load_samples", "DTYPES", "Candidate", "build_reference", "build_converted", "checkpoint_advice",
           "describe_backend", "TOP5", "EvalResult", "ModelScore", "evaluate", "Shard", "StridedShardSampler",
           "init_distributed", "reduce_result", "format_report", "report_dict"]
