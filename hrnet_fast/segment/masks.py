"""Class maps as PNG files, and ground-truth masks read back.

A palette PNG (mode "P") shows each class in a colour and still holds the class ids as its pixel values (PIL's
``Image.open(path)`` gives them back as they are); 19 classes get Cityscapes' colours (its train ids 0..18, as
cityscapesScripts' ``labels.py`` lists them), other counts up to 256 the PASCAL VOC colour map (each id's bits
spread over the high bits of R, G and B), so neighbouring ids differ visibly. Raw ids are a greyscale PNG, 8-bit
("L") for up to 256 classes and 16-bit ("I;16") beyond.
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch
from PIL import Image

CITYSCAPES_COLOURS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)]
PALETTE_MAX = 256


def palette(num_classes: int) -> List[int]:
    """768 values (R, G, B for ids 0..255): Cityscapes' colours for 19 classes, otherwise the VOC colour map."""
    if num_classes > PALETTE_MAX:
        raise ValueError(f"a palette PNG holds at most {PALETTE_MAX} classes; {num_classes} need raw ids")
    colours = []
    for i in range(PALETTE_MAX):
        if num_classes == len(CITYSCAPES_COLOURS) and i < num_classes:
            colours.append(CITYSCAPES_COLOURS[i])
            continue
        rgb, k = [0, 0, 0], i
        for bit in range(7, -1, -1):  # bits 0, 1, 2 of the id go to R, G, B's top bit, bits 3..5 to the next
            for c in range(3):
                rgb[c] |= ((k >> c) & 1) << bit
            k >>= 3
        colours.append(tuple(rgb))
    return [v for colour in colours for v in colour]


def mask_image(labels: torch.Tensor, num_classes: int, style: str) -> Image.Image:
    """A [H, W] class map as a PIL image: ``style`` "palette" or "raw"."""
    if labels.dim() != 2:
        raise ValueError(f"a class map is [H, W]; got shape {list(labels.shape)}")
    ids = labels.cpu().numpy()
    if style == "palette":
        image = Image.fromarray(ids.astype(np.uint8))
        image.putpalette(palette(num_classes))  # makes the greyscale image a palette one, ids unchanged
        return image
    if style == "raw":
        if num_classes <= PALETTE_MAX:
            return Image.fromarray(ids.astype(np.uint8))   # mode "L"
        return Image.fromarray(ids.astype(np.uint16))      # mode "I;16"
    raise ValueError(f"mask style must be 'palette' or 'raw'; got {style!r}")


def read_mask(path: str) -> np.ndarray:
    """The class ids of a mask PNG ([H, W] int64): palette and greyscale PNGs' pixel values as they are."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L", "I;16", "I"):
            raise ValueError(f"{path}: a mask must be a palette or greyscale PNG of class ids; it is mode "
                             f"{image.mode!r}")
        return np.asarray(image).astype(np.int64)
