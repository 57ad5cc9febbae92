"""What ``Segmenter`` accepts as images: uint8 RGB, height x width x 3, as a torch tensor or a numpy array, one
image ([H, W, 3]) or a batch of images of one size ([N, H, W, 3]). Anything else is refused with the problem named,
before any model runs."""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np
import torch


def as_image_batch(images: Any) -> Tuple[torch.Tensor, bool]:
    """(uint8 tensor [N, H, W, 3], whether a single [H, W, 3] image was given)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"images must be uint8 RGB (values 0..255); got a numpy array of dtype {images.dtype}")
        # torch refuses to share a read-only buffer (PIL's arrays are read-only): copy those.
        images = torch.from_numpy(np.ascontiguousarray(images) if images.flags.writeable else images.copy())
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a uint8 torch tensor or numpy array, [H, W, 3] or [N, H, W, 3]; got "
                        f"{type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 RGB (values 0..255), the normalisation is the pipeline's; got "
                        f"{images.dtype}")
    if images.dim() not in (3, 4):
        raise ValueError(f"images must be [H, W, 3] or [N, H, W, 3]; got shape {list(images.shape)}")
    single = images.dim() == 3
    batch = images.unsqueeze(0) if single else images
    if batch.shape[-1] != 3:
        hint = (" (channels first? pass image.permute(1, 2, 0) for one image)" if batch.shape[1] == 3 else "")
        raise ValueError(f"images must have 3 channels (RGB) in the last dimension, [..., H, W, 3]; got shape "
                         f"{list(images.shape)}{hint}")
    if batch.shape[1] == 0 or batch.shape[2] == 0:
        raise ValueError(f"images must be at least 1x1; got shape {list(images.shape)}")
    return batch, single
