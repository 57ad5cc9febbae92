"""The images to evaluate: an ImageFolder tree or a ``--labels`` file, read into (path, label) samples and checked
against the model's class count before any model is built, so a wrong folder fails fast."""
from __future__ import annotations

from typing import List, Optional

from ..imagefolder import Sample, find_image_folder, read_labels_file
from .errors import UserError


def load_samples(data: str, labels: Optional[str], num_classes: int) -> tuple[List[Sample], Optional[int]]:
    """Samples from ``--labels`` or the ImageFolder tree, checked against the model's class count. Returns the
    samples and the folder's class count (None with a labels file)."""
    try:
        if labels:
            samples, folder_classes = read_labels_file(data, labels), None
        else:
            samples, classes = find_image_folder(data)
            folder_classes = len(classes)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from None
    top_label = max(label for _, label in samples)
    if top_label >= num_classes:
        where = f"{data} has {folder_classes} class folders" if folder_classes else f"{labels} has label {top_label}"
        raise UserError(f"{where}, but the model has {num_classes} classes (--num-classes)")
    return samples, folder_classes
