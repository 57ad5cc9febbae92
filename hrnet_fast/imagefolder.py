"""Validation images on disk: discovery (an ImageFolder tree or a labels file) and the evaluation preprocessing.

The preprocessing is the one the published HRNet accuracies were measured with: resize the short side to 256
(bilinear, antialiased, as PIL does it), centre-crop 224, scale to [0, 1], ImageNet mean/std normalisation. It is
written with PIL + numpy + torch only and reproduces torchvision's
``Resize(256) + CenterCrop(224) + ToTensor() + Normalize(IMAGENET_MEAN, IMAGENET_STD)`` bit for bit: the same PIL
resize call, the same crop offsets (including Python's round-half-to-even), and the same float32 operations in the
same order.

Decoding is split from normalisation: the dataset yields uint8 crops (4x less to copy to the GPU), and
:func:`normalize` turns a batch into the model input on the device. Element-wise float32 ops are correctly
rounded on CPU and GPU alike, so where the normalisation runs does not change a bit.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's ImageFolder extensions, matched case-insensitively, so both tools see the same files.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

Sample = Tuple[str, int]  # (absolute image path, class index)


# ---------------------------------------------------------------------------------------------- preprocessing
def resized_size(width: int, height: int, short_side: int) -> Tuple[int, int]:
    """(width, height) after scaling the short side to ``short_side``, the long side truncated as torchvision
    does (``int(short_side * long / short)``)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = short_side, int(short_side * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_offsets(width: int, height: int, crop: int) -> Tuple[int, int]:
    """(left, top) of a ``crop`` x ``crop`` window centred in a ``width`` x ``height`` image. Python's round()
    rounds halves to even (16.5 -> 16, 17.5 -> 18); torchvision uses it, so this does too."""
    return int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))


def check_sizes(resize: int, crop: int) -> None:
    """ValueError unless 0 < crop <= resize: the centre crop is cut from an image whose short side is
    ``resize`` (torchvision would zero-pad a larger crop; an evaluation should not)."""
    if crop <= 0 or resize <= 0:
        raise ValueError(f"resize ({resize}) and crop ({crop}) must be positive")
    if crop > resize:
        raise ValueError(f"crop ({crop}) must not exceed resize ({resize}): the centre crop is cut from an "
                         f"image whose short side is {resize}")


def resize_center_crop(image: Image.Image, resize: int, crop: int) -> torch.Tensor:
    """RGB uint8 tensor (3, crop, crop): the image converted to RGB, its short side resized to ``resize``
    (bilinear, antialiased) and centre-cropped."""
    check_sizes(resize, crop)
    image = image.convert("RGB")
    size = resized_size(image.width, image.height, resize)
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    left, top = center_crop_offsets(image.width, image.height, crop)
    pixels = np.array(np.asarray(image)[top:top + crop, left:left + crop])  # (crop, crop, 3) uint8, own copy
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def normalize(batch: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """float32 model input from uint8 images (..., 3, H, W): ``(x / 255 - mean) / std`` in float32, the
    operations (and their order) of torchvision's ToTensor + Normalize."""
    if batch.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {batch.dtype}")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
    return batch.to(torch.float32).div(255).sub(mean_t).div(std_t)


def preprocess(image: Image.Image, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """float32 (3, crop, crop) model input for one PIL image: the evaluation transform in one call."""
    return normalize(resize_center_crop(image, resize, crop))


# ---------------------------------------------------------------------------------------------- discovery
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def find_image_folder(root: str) -> Tuple[List[Sample], List[str]]:
    """Samples and class names of an ImageFolder tree: one sub-folder per class, classes sorted by name and
    numbered from 0, images found recursively in each class folder, in torchvision's order.

    ValueError/FileNotFoundError with the problem named when the folder is missing, has no class sub-folders,
    has no images at all, or has classes without images (a class with no images would shift nothing but would
    silently mean the set is incomplete).
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder not found: {root}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders: expected one sub-folder of images per class "
                         f"(or pass --labels FILE with lines 'relative/path.jpg <label>')")
    samples: List[Sample] = []
    empty: List[str] = []
    for index, name in enumerate(classes):
        class_dir = os.path.join(root, name)
        found = [os.path.join(dirpath, f)
                 for dirpath, _, files in sorted(os.walk(class_dir, followlinks=True))
                 for f in sorted(files) if _is_image(f)]
        if not found:
            empty.append(name)
        samples.extend((path, index) for path in found)
    if not samples:
        raise ValueError(f"no images under {root} (looked for {', '.join(IMAGE_EXTENSIONS)} in "
                         f"{len(classes)} class folders)")
    if empty:
        raise ValueError(f"{len(empty)} class folder(s) under {root} have no images: {', '.join(empty[:10])}"
                         f"{' ...' if len(empty) > 10 else ''}")
    return samples, classes


def read_labels_file(root: str, labels_file: str) -> List[Sample]:
    """Samples from a labels file, one ``relative/path.jpg <int label>`` per line (paths relative to ``root``;
    blank lines and lines starting with '#' are ignored). Every listed image must exist."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder not found: {root}")
    if not os.path.isfile(labels_file):
        raise FileNotFoundError(f"labels file not found: {labels_file}")
    samples: List[Sample] = []
    with open(labels_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)  # paths may contain spaces; the label is the last field
            where = f"{labels_file}:{line_no}"
            if len(parts) != 2:
                raise ValueError(f"{where}: expected 'relative/path.jpg <int label>', got {line!r}")
            rel_path, label_text = parts
            try:
                label = int(label_text)
            except ValueError:
                raise ValueError(f"{where}: label {label_text!r} is not an integer") from None
            if label < 0:
                raise ValueError(f"{where}: label {label} is negative")
            path = os.path.join(root, rel_path)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{where}: image not found: {path}")
            samples.append((path, label))
    if not samples:
        raise ValueError(f"labels file {labels_file} lists no images")
    return samples


# ---------------------------------------------------------------------------------------------- dataset
class EvalImageDataset(torch.utils.data.Dataset):
    """Decodes and crops the images of ``samples`` to uint8 (3, crop, crop) tensors.

    A file that PIL cannot decode (corrupt, truncated, not an image) is not fatal: it yields ``ok=False`` so a
    long evaluation does not die at image 49,000, and the caller reports how many and which were skipped.
    """

    def __init__(self, samples: Sequence[Sample], resize: int = 256, crop: int = 224):
        check_sizes(resize, crop)
        self.samples = list(samples)
        self.resize = resize
        self.crop = crop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, int, bool]:
        """(uint8 crop (3, crop, crop), label, index, decoded ok)."""
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                pixels = resize_center_crop(image, self.resize, self.crop)
        except (OSError, ValueError):
            # PIL reports unreadable files as OSError (UnidentifiedImageError, truncated data) or ValueError.
            pixels = torch.zeros(3, self.crop, self.crop, dtype=torch.uint8)
            return pixels, label, index, False
        return pixels, label, index, True
