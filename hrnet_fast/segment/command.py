"""``hrnet-fast seg``: a folder of images in, a folder of PNG class maps out.

    hrnet-fast seg --model seg_hrnetv2_w48 --checkpoint w48_cityscapes.pth --images frames/ --out masks/
    hrnet-fast seg --model seg_hrnetv2_w18 --checkpoint fcn_hr18.pth --align-corners false --mode slide \\
        --crop-size 512x1024 --stride 341x682 --flip --images frames/ --out masks/ --style raw

Each image (any format PIL reads, found recursively) becomes ``OUT/<relative path>.png``: a palette PNG (class
ids as pixel values, shown in colour) or raw ids (``--style raw``). The pipeline options here are also
``hrnet-fast eval --task seg``'s (``add_pipeline_arguments``, ``build_segmenter``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Tuple

from ..evaluate.errors import UserError


def parse_size(text: str) -> Tuple[int, int]:
    """"512x1024" -> (512, 1024); "512" -> (512, 512)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH or one number, e.g. 512x1024; got {text!r}")
    return (parts[0], parts[-1])


def parse_triple(text: str) -> Tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers R,G,B; got {text!r}")
    return values


def parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false; got {text!r}")


def add_pipeline_arguments(parser) -> None:
    """The Segmenter's options, shared by ``seg`` and ``eval --task seg``."""
    from ..imagefolder import IMAGENET_MEAN, IMAGENET_STD

    parser.add_argument("--align-corners", type=parse_bool,
                        help="the checkpoint's resize convention: true (HRNet-Semantic-Segmentation's default) or "
                             "false (mmsegmentation; its Cityscapes configs); default: the model's, true")
    parser.add_argument("--mode", choices=["whole", "slide"], default="whole", help="whole image or sliding windows")
    parser.add_argument("--crop-size", type=parse_size, help="slide window, HxW (e.g. 512x1024)")
    parser.add_argument("--stride", type=parse_size, help="slide stride, HxW (e.g. 341x682)")
    parser.add_argument("--flip", action="store_true", help="average with the horizontally mirrored image")
    parser.add_argument("--flip-average", choices=["logits", "softmax"], default="logits",
                        help="flip: mean of logits (HRNet-Semantic-Segmentation) or of softmaxes (mmsegmentation)")
    parser.add_argument("--mean", type=parse_triple, default=IMAGENET_MEAN, help="R,G,B in 0..1 (default ImageNet)")
    parser.add_argument("--std", type=parse_triple, default=IMAGENET_STD, help="R,G,B in 0..1 (default ImageNet)")
    parser.add_argument("--reference", action="store_true",
                        help="the plain-PyTorch reference pipeline (full-resolution upsample, argmax) instead of the "
                             "fused one")


def build_segmenter(args: argparse.Namespace, device):
    """The Segmenter ``args`` describe, with the checkpoint's weights, on ``device``."""
    from ..checkpoints import CheckpointError, load_checkpoint
    from ..evaluate.candidates import DTYPES
    from ..registry import create_model, resolve_name, task_of
    from .pipeline import Segmenter

    try:
        name = resolve_name(args.model)
    except ValueError as e:
        raise UserError(str(e)) from None
    if task_of(name) != "segmentation":
        raise UserError(f"--model {args.model} is a {task_of(name)} model; segmentation needs one of "
                        f"{', '.join(_segmentation_models())}")
    # --align-corners builds the model with the checkpoint's convention and states it to load_checkpoint, which
    # then checks it instead of warning that a flat checkpoint does not record it.
    stated = {} if args.align_corners is None else {"align_corners": args.align_corners}
    model = create_model(name, num_classes=args.num_classes, **stated)
    if not os.path.isfile(args.checkpoint):
        raise UserError(f"checkpoint not found: {args.checkpoint}")
    try:
        load_checkpoint(model, args.checkpoint, strict=True, **stated)
    except CheckpointError as e:
        advice = ("\n  Pass --align-corners false (or true) for the checkpoint's convention."
                  if "align_corners" in str(e) else "")
        raise UserError(f"cannot load {args.checkpoint} into {name}: {e}{advice}") from None
    model = model.eval().to(device)
    try:
        return Segmenter(model, mode=args.mode, crop_size=args.crop_size, stride=args.stride, flip=args.flip,
                         mean=args.mean, std=args.std, fused=not args.reference, flip_average=args.flip_average,
                         dtype=DTYPES[args.dtype], backend=args.backend)
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None


def _segmentation_models() -> List[str]:
    from ..registry import list_models
    return list_models("segmentation")


def find_images(root: str) -> List[str]:
    """Image files under ``root`` (recursively), sorted by relative path."""
    from ..imagefolder import IMAGE_EXTENSIONS

    if not os.path.isdir(root):
        raise UserError(f"image folder not found: {root}")
    found = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return found


def read_rgb(path: str):
    """uint8 [H, W, 3] of an image file, converted to RGB; UserError naming it when PIL cannot read it."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..evaluate.candidates import DTYPES
    from ..ops.backends import BACKENDS

    parser.add_argument("--model", required=True, help="segmentation model, e.g. seg_hrnetv2_w48")
    parser.add_argument("--checkpoint", required=True, help="weights: official or mmsegmentation")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, help="folder for the PNG class maps (created if missing)")
    parser.add_argument("--style", choices=["palette", "raw"], default="palette",
                        help="palette PNG (ids as pixel values, shown in colour; default) or raw greyscale ids")
    parser.add_argument("--num-classes", type=int, help="classes of the checkpoint (default: the model's, 19)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="network dtype (default fp32)")
    parser.add_argument("--backend", choices=BACKENDS, help="convert() backend (default: the best live one)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none when stderr is no TTY)")
    add_pipeline_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Writes one PNG per image; returns how many."""
    from tqdm import tqdm

    from ..evaluate.options import resolve_device
    from .masks import mask_image

    if args.num_classes is not None and args.num_classes <= 0:
        raise UserError(f"--num-classes must be positive; got {args.num_classes}")
    names = find_images(args.images)
    seg = build_segmenter(args, resolve_device(args.device))
    if args.style == "palette" and seg.num_classes > 256:
        raise UserError(f"--style palette holds at most 256 classes; use --style raw for {seg.num_classes}")
    bar = tqdm(names, unit="img", file=sys.stderr, disable=args.no_progress or not sys.stderr.isatty(),
               dynamic_ncols=True)
    for rel in bar:
        image = read_rgb(os.path.join(args.images, rel))
        try:
            labels = seg(image)
        except ValueError as e:
            raise UserError(f"{rel}: {e}") from None
        target = os.path.join(args.out, os.path.splitext(rel)[0] + ".png")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        mask_image(labels, seg.num_classes, args.style).save(target)
    bar.close()
    print(f"wrote {len(names)} class maps to {args.out}", file=sys.stderr)
    return len(names)


def main(args: argparse.Namespace) -> int:
    try:
        run(args)
        return 0
    except UserError as e:
        print(f"hrnet-fast seg: error: {e}", file=sys.stderr)
        return 2
