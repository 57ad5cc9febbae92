"""Parameter and FLOP counts of HRNet models, and the ``hrnet-fast profile`` command.

``profile(model)`` runs one batch-1 forward on the meta device (shapes only, no arithmetic, no weight copy) with
forward hooks on the leaf layers and counts, per call:

    conv        kh*kw*Cin/groups multiply-accumulates per output element, +1 per output element for a bias
    batch norm  2 per output element (scale and shift)
    ReLU        1 per output element
    upsample    1 per output element
    avg pool    1 per input element
    linear      in*out multiply-accumulates, +out for the bias
    tensor additions are not counted.

That is the convention of the MMClassification model tables (mmcv's complexity counter, which leaves out the
linear bias: 1,000 operations, immaterial), whose "Flops (G)" column is therefore multiply-accumulates plus
element-wise work, not 2 x MACs. ``Profile.macs`` counts only the
conv and linear multiply-accumulates; PaddleClas's "FLOPS (G)" column is about ``2 * macs`` (for W30…W64).

The pose and segmentation papers count conv multiply-adds with the official repositories' ``get_model_summary``,
which sums ``weight.numel() * Ho * Wo`` over every conv (our ``macs``) but prints the total divided by
``1024**3``: the pose table's "GFLOPs" (7.1 / 14.6 / 16.0 / 32.9) are GiB-scaled MACs, 7.4 % below the
decimal count (mmpose's 7.7 for W32 256x192 is the decimal one, with BN and ReLU added by mmcv's counter).
The segmentation paper's 747 G for W48 at 1024x2048 is decimal.

A transposed conv (HigherHRNet's deconv) is counted by its real work: kh*kw*Cout/groups multiply-accumulates per
input element. HigherHRNet's README (28.6 M / 47.9 G for W32 at 512, 74.8 G at 640; 63.8 M / 154.3 G for W48 at
640) uses the same summary tool, in decimal G, which multiplies every "Conv" layer's weight size by its output
pixels: for a stride-2 transposed conv that is 4x its multiply-accumulates. Our count plus three times the deconv's
matches each of those figures to its last digit (46.20 + 1.66 = 47.86 for W32 at 512).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.func import functional_call

from .models import BilinearResize
from .models.ocr import SpatialGather
from .ops.folding import is_batchnorm
from .registry import create_model, list_models, resolve_name, task_of


@dataclass(frozen=True)
class Profile:
    """Size and cost of one forward pass of a batch of one image.

    Attributes:
        params: number of parameters.
        macs: conv + linear multiply-accumulates.
        flops: the MMClassification convention (module docstring): MACs plus bias, BN, ReLU, upsample and
            pooling work.
        input_size: (height, width) of the image.
        flops_by_layer: ``flops`` split by layer kind (conv, bn, relu, upsample, pool, linear).
    """

    params: int
    macs: int
    flops: int
    input_size: Tuple[int, int]
    flops_by_layer: Dict[str, int]


# A layer's counter: (module, its input, its output) -> (MACs, FLOPs).
Counter = Callable[[nn.Module, torch.Tensor, torch.Tensor], Tuple[int, int]]


def _count_conv(m: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> Tuple[int, int]:
    kh, kw = m.kernel_size
    macs = y.numel() * (m.in_channels // m.groups) * kh * kw
    return macs, macs + (y.numel() if m.bias is not None else 0)


def _count_deconv(m: nn.ConvTranspose2d, x: torch.Tensor, y: torch.Tensor) -> Tuple[int, int]:
    """A transposed conv multiplies each input element by kh*kw*Cout/groups weights."""
    kh, kw = m.kernel_size
    macs = x.numel() * (m.out_channels // m.groups) * kh * kw
    return macs, macs + (y.numel() if m.bias is not None else 0)


def _count_linear(m: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> Tuple[int, int]:
    macs = x.numel() * m.out_features
    return macs, macs + (y.numel() if m.bias is not None else 0)


COUNTERS: Dict[type, Tuple[str, Counter]] = {
    nn.Conv2d: ("conv", _count_conv),
    nn.ConvTranspose2d: ("conv", _count_deconv),
    nn.Linear: ("linear", _count_linear),
    nn.ReLU: ("relu", lambda m, x, y: (0, y.numel())),
    nn.Upsample: ("upsample", lambda m, x, y: (0, y.numel())),
    BilinearResize: ("upsample", lambda m, x, y: (0, y.numel())),
    nn.AdaptiveAvgPool2d: ("pool", lambda m, x, y: (0, x.numel())),
    nn.AvgPool2d: ("pool", lambda m, x, y: (0, x.numel())),
}
# Every BatchNorm form (BatchNorm2d, SyncBatchNorm, frozen BNs: ``is_batchnorm``) is one scale and one shift.
BN_COUNTER: Tuple[str, Counter] = ("bn", lambda m, x, y: (0, 2 * y.numel()))


def _counter(m: nn.Module) -> Optional[Tuple[str, Counter]]:
    """The counter of layer ``m``, or None when it has none."""
    return BN_COUNTER if is_batchnorm(m) else COUNTERS.get(type(m))


# Leaf layers that do no arithmetic worth counting. OCR's gather head (a softmax and one matmul) is among them: with
# the object attention's two matmuls, which sit in that module's forward, about 0.25 % of HRNetV2-W48 + OCR's MACs.
FREE_LAYERS = (nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout2d, SpatialGather)


def _check_countable(model: nn.Module) -> None:
    """Every leaf layer must be one we know how to count, or the totals would silently be too low."""
    unknown = sorted({type(m).__name__ for m in model.modules()
                      if not list(m.children()) and _counter(m) is None and not isinstance(m, FREE_LAYERS)})
    if unknown:
        raise TypeError(f"profile() counts the reference HRNet layers (conv, BN, ReLU, upsample, pooling, linear); "
                        f"this model also has {', '.join(unknown)}. Profile the model before convert().")


def profile(model: Union[nn.Module, str], input_size: Sequence[int] = (224, 224)) -> Profile:
    """Counts the parameters, MACs and FLOPs of ``model`` (a module or a model name) for one image of
    ``input_size`` (height, width), without computing anything: the forward runs on meta tensors.

    >>> p = profile("hrnet_w18")
    >>> round(p.params / 1e6, 2), round(p.flops / 1e9, 2)
    (21.3, 4.33)
    """
    if isinstance(model, str):
        with torch.device("meta"):
            model = create_model(model)
    if len(input_size) != 2:
        raise ValueError(f"input_size must be (height, width), got {tuple(input_size)}")
    h, w = (int(s) for s in input_size)
    _check_countable(model)

    totals: Dict[str, int] = {}
    macs_total = [0]

    def hook(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        kind, count = _counter(module)
        macs, flops = count(module, inputs[0], output)
        macs_total[0] += macs
        totals[kind] = totals.get(kind, 0) + flops

    handles = [m.register_forward_hook(hook) for m in model.modules() if _counter(m) is not None]
    # Meta stand-ins for every parameter and buffer: shapes flow through the forward, nothing is computed and
    # the model's own tensors are neither copied nor touched (BN running stats included).
    meta_state = {name: torch.empty_like(t, device="meta")
                  for name, t in (*model.named_parameters(), *model.named_buffers())}
    x = torch.empty(1, getattr(model, "in_chans", 3), h, w, device="meta")
    # Eval mode (restored after) takes the cheaper BN path on meta tensors; the counts do not depend on it.
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            functional_call(model, meta_state, (x,))
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    params = sum(p.numel() for p in model.parameters())
    return Profile(params=params, macs=macs_total[0], flops=sum(totals.values()), input_size=(h, w),
                   flops_by_layer=totals)


@dataclass(frozen=True)
class SeedFigures:
    """Published figures at 224x224: MMClassification 0.x "Params(M)"/"Flops(G)" and PaddleClas
    "Parameters (M)"/"FLOPS (G)" (the project's seed tables)."""

    mmcls_params: float
    mmcls_flops: float
    paddle_params: float
    paddle_flops: float


_MMCLS = {18: (21.30, 4.33), 30: (37.71, 8.17), 32: (41.23, 8.99), 40: (57.55, 12.77), 44: (67.06, 14.96),
          48: (77.47, 17.36), 64: (128.06, 29.00)}
_PADDLE = {18: (21.290, 4.140), 30: (37.710, 16.230), 32: (41.230, 17.860), 40: (57.550, 25.410),
           44: (67.060, 29.790), 48: (77.470, 34.580), 64: (128.060, 57.830)}
# The ssld weights are PaddleClas's HRNet_W18_C / HRNet_W48_C architecture (MMCls lists them as "(ssld)").
SEEDS: Dict[str, SeedFigures] = {
    name: SeedFigures(*_MMCLS[w], *_PADDLE[w])
    for w in _MMCLS for name in (f"hrnet_w{w}", f"hrnet_w{w}_ssld") if name in list_models()
}
SEED_INPUT_SIZE = (224, 224)


# Pose and segmentation: (model, input size) -> (published params in M, published GFLOPs, what the figure is).
GIB_MACS = "conv MACs / 2**30"
DECONV_X4 = "conv MACs / 1e9, the deconv counted 4x (module docstring)"
PUBLISHED: Dict[Tuple[str, Tuple[int, int]], Tuple[float, float, str]] = {
    ("pose_hrnet_w32", (256, 192)): (28.5, 7.1, GIB_MACS),
    ("pose_hrnet_w48", (256, 192)): (63.6, 14.6, GIB_MACS),
    ("pose_hrnet_w32", (384, 288)): (28.5, 16.0, GIB_MACS),
    ("pose_hrnet_w48", (384, 288)): (63.6, 32.9, GIB_MACS),
    ("seg_hrnetv2_w48", (1024, 2048)): (65.9, 747.0, "conv MACs / 1e9"),
    ("higher_hrnet_w32", (512, 512)): (28.6, 47.9, DECONV_X4),
    ("higher_hrnet_w32", (640, 640)): (28.6, 74.8, DECONV_X4),
    ("higher_hrnet_w48", (640, 640)): (63.8, 154.3, DECONV_X4),
}
TASK_INPUT_SIZES = {"pose": [(256, 192), (384, 288)], "segmentation": [(512, 1024), (1024, 2048)],
                    "bottom-up pose": [(512, 512), (640, 640)], "OCR segmentation": [(512, 1024), (1024, 2048)]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=None,
                        help="comma-separated model names or aliases (default: every variant)")
    parser.add_argument("--input-size", default=None, type=_parse_size,
                        help="HxW or N for NxN (default: 224 for classification, 256x192 and 384x288 for pose, "
                             "512x1024 and 1024x2048 for segmentation); the seed columns apply to 224 only")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON to PATH")


def _parse_size(text: str) -> Tuple[int, int]:
    parts = text.lower().replace("×", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size must be N or HxW, got {text!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"input size must be N or HxW with positive N, H, W, got {text!r}")
    return sizes[0], sizes[1]


def profile_rows(names: Sequence[str], input_size: Tuple[int, int]) -> List[Dict]:
    """One dict per model: our counts, and the seed figures with the differences where they apply."""
    rows = []
    for name in names:
        p = profile(name, input_size)
        row = dict(model=name, input_size=list(p.input_size), params_m=p.params / 1e6, macs_g=p.macs / 1e9,
                   flops_g=p.flops / 1e9, flops_by_layer_g={k: v / 1e9 for k, v in p.flops_by_layer.items()})
        seed = SEEDS.get(name) if tuple(input_size) == SEED_INPUT_SIZE else None
        if seed is not None:
            row["seed"] = asdict(seed)
            row["params_diff_m_vs_mmcls"] = row["params_m"] - seed.mmcls_params
            row["flops_diff_pct_vs_mmcls"] = 100 * (row["flops_g"] / seed.mmcls_flops - 1)
            row["two_macs_diff_pct_vs_paddle"] = 100 * (2 * row["macs_g"] / seed.paddle_flops - 1)
        rows.append(row)
    return rows


def format_table(rows: Sequence[Dict]) -> str:
    """Markdown table of ``profile_rows`` output."""
    header = ["model", "params (M)", "MMCls params", "Paddle params", "MACs (G)", "FLOPs (G)", "MMCls FLOPs",
              "FLOPs vs MMCls", "2xMACs (G)", "Paddle FLOPS", "2xMACs vs Paddle"]
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        s = r.get("seed")
        cells = [r["model"], f"{r['params_m']:.3f}",
                 f"{s['mmcls_params']:.2f}" if s else "-", f"{s['paddle_params']:.3f}" if s else "-",
                 f"{r['macs_g']:.3f}", f"{r['flops_g']:.3f}",
                 f"{s['mmcls_flops']:.2f}" if s else "-",
                 f"{r['flops_diff_pct_vs_mmcls']:+.2f} %" if s else "-",
                 f"{2 * r['macs_g']:.3f}", f"{s['paddle_flops']:.2f}" if s else "-",
                 f"{r['two_macs_diff_pct_vs_paddle']:+.2f} %" if s else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_rows(names: Sequence[str], input_size: Optional[Tuple[int, int]]) -> List[Dict]:
    """Pose and segmentation models at their usual input sizes (or ``input_size``), beside the published figures."""
    rows = []
    for name in names:
        for size in [input_size] if input_size else TASK_INPUT_SIZES[task_of(name)]:
            p = profile(name, size)
            row = dict(model=name, input_size=list(size), params_m=p.params / 1e6, macs_g=p.macs / 1e9,
                       macs_gib=p.macs / 2 ** 30, flops_g=p.flops / 1e9)
            published = PUBLISHED.get((name, tuple(size)))
            if published is not None:
                row["published"] = dict(params_m=published[0], gflops=published[1], counts=published[2])
            rows.append(row)
    return rows


def format_task_table(rows: Sequence[Dict]) -> str:
    """Markdown table of ``task_rows`` output."""
    header = ["model", "input", "params (M)", "published params", "MACs (G)", "MACs / 2^30", "published GFLOPs",
              "published figure is", "FLOPs (G, MMCls convention)"]
    lines = ["| " + " | ".join(header) + " |", "|:---|:---|" + "---:|" * (len(header) - 3) + ":---|---:|"]
    for r in rows:
        pub = r.get("published")
        cells = [r["model"], "x".join(map(str, r["input_size"])), f"{r['params_m']:.3f}",
                 f"{pub['params_m']:.1f}" if pub else "-", f"{r['macs_g']:.2f}", f"{r['macs_gib']:.2f}",
                 f"{pub['gflops']:.1f}" if pub else "-", pub["counts"] if pub else "-", f"{r['flops_g']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        names = [resolve_name(n) for n in args.models.split(",")] if args.models else list_models()
        classification = [n for n in names if task_of(n) == "classification"]
        others = [n for n in names if task_of(n) != "classification"]
        size = args.input_size or SEED_INPUT_SIZE
        rows = profile_rows(classification, size)
        more = task_rows(others, args.input_size)
    except ValueError as err:
        print(f"hrnet-fast profile: error: {err}", file=sys.stderr)
        return 2
    h, w = size
    if rows:
        print(f"Input {h}x{w}, batch 1. FLOPs: MMClassification convention (conv/linear MACs + bias, BN 2/elem, "
              f"ReLU and upsample 1/elem, pooling 1/input elem).")
        if (h, w) != SEED_INPUT_SIZE:
            print("The seed tables are for 224x224: their columns are left empty.")
        print()
        print(format_table(rows))
        if any("seed" in r for r in rows):
            print("\nPaddleClas FLOPS is about 2 x MACs for W30…W64; its W18 entry (4.14 G) is not (MACs alone are "
                  "4.28 G). Its models have bias-free head convs, as the ssld variants here.")
    if more:
        print(("\n" if rows else "") + "Pose and segmentation models, batch 1. MACs: conv multiply-adds. The pose "
              "paper's GFLOPs are the official summary tool's MAC total divided by 2^30 (7.4 % below MACs / 1e9); "
              "mmpose's 7.7 G for W32 256x192 is MACs + BN/ReLU in decimal G.\n")
        print(format_task_table(more))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(input_size=[h, w], torch=torch.__version__, rows=rows, task_rows=more), f, indent=2)
        print(f"\nwrote {args.json}")
    return 0
