"""The evaluation's report: the JSON dictionary (settings, per-model counts and percentages, agreement,
throughput, skipped images) and the Markdown table printed from it, so the two always carry the same figures."""
from __future__ import annotations

from typing import Dict, Sequence

import torch

from ..imagefolder import Sample
from .candidates import Candidate
from .scoring import EvalResult


def _percent(count: int, total: int) -> float:
    return 100.0 * count / total


def report_dict(result: EvalResult, candidates: Sequence[Candidate], samples: Sequence[Sample],
                settings: Dict) -> Dict:
    """The JSON report: settings, per-model counts and percentages, agreement, throughput, skipped images."""
    models = {}
    for c in candidates:
        s = result.scores[c.name]
        models[c.name] = {
            "dtype": c.dtype, "backend": c.backend,
            "correct_top1": s.correct_top1, "correct_top5": s.correct_top5,
            "top1": _percent(s.correct_top1, result.images), "top5": _percent(s.correct_top5, result.images),
            "forward_s": s.forward_s,
            "forward_images_per_s": result.images / s.forward_s if s.forward_s > 0 else None,
        }
    agreement = None
    if len(candidates) == 2:
        agreement = {"models": [c.name for c in candidates], "same_top1": result.same_top1,
                     "percent": _percent(result.same_top1, result.images)}
    return {
        **settings,
        "images": result.images,
        "skipped": len(result.skipped),
        "skipped_paths": [samples[i][0] for i in result.skipped],
        "top5_k": result.top5_k,
        "results": models,
        "top1_agreement": agreement,
        "wall_s": result.wall_s,
        "images_per_s": result.images / result.wall_s if result.wall_s > 0 else None,
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
    }


def format_report(report: Dict) -> str:
    """Markdown: one row per model (top-1, top-k, forward images/s), then agreement, throughput, skipped."""
    k = report["top5_k"]
    lines = [f"{report['model']} on {report['images']} images ({report['resize']} -> {report['crop']}, "
             f"{report['world_size']} process{'es' if report['world_size'] > 1 else ''} on {report['device']})",
             "",
             f"| model | dtype | backend | top-1 (%) | top-{k} (%) | forward images/s |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for name, r in report["results"].items():
        speed = f"{r['forward_images_per_s']:.1f}" if r["forward_images_per_s"] else "-"
        lines.append(f"| {name} | {r['dtype']} | {r['backend']} | {r['top1']:.3f} | {r['top5']:.3f} | {speed} |")
    lines.append("")
    agreement = report["top1_agreement"]
    if agreement:
        lines.append(f"top-1 agreement, {' vs '.join(agreement['models'])}: {agreement['percent']:.3f} % "
                     f"({agreement['same_top1']} / {report['images']} images)")
    if report["images_per_s"]:
        lines.append(f"end to end (decode + forward): {report['images_per_s']:.1f} images/s")
    if report["skipped"]:
        shown = report["skipped_paths"][:5]
        lines.append(f"skipped {report['skipped']} unreadable image(s), not counted: {', '.join(shown)}"
                     f"{' ...' if report['skipped'] > len(shown) else ''}")
    return "\n".join(lines)
