"""``Segmenter``: uint8 RGB images in, class maps out.

    seg = hrnet_fast.Segmenter(hrnet_fast.create_model("seg_hrnetv2_w48").eval())
    labels = seg(image)                    # image uint8 [H, W, 3] -> [H, W] uint8 (int64 past 256 classes)
    probs = seg.probabilities(image)       # [C, H, W] float32, the full softmax

The fused pipeline (default) runs ``hrnet_fast.convert`` of the model between two fused ops:
``ops.normalize`` (uint8 HWC to the network's input in one pass) and ``ops.resize_argmax`` (bilinear resize of
the stride-4 logits and argmax per output pixel, never materialising the full-resolution logits). Where the answer
needs full-resolution logits (sliding windows, a softmax average, ``probabilities``), they are formed a band of
rows at a time (``tiled``). ``fused=False`` runs the plain-PyTorch reference (``reference``), the definition of
the answers.
"""
from __future__ import annotations

import copy
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..imagefolder import IMAGENET_MEAN, IMAGENET_STD
from . import reference
from ..ops.seg_checks import label_dtype
from .images import as_image_batch
from .tiled import WindowedScores, merged_bands
from .windows import Size, Window, as_pair, check_slide, slide_windows

MODES = ("whole", "slide")
FLIP_AVERAGES = ("logits", "softmax")


def _check_model(model: nn.Module) -> bool:
    """The model's align_corners; a clear error for anything but a segmentation model in eval mode."""
    from ..convert.converted_model import ConvertedModel

    if isinstance(model, ConvertedModel):
        raise TypeError("Segmenter takes the model itself, not a converted one: it converts it (fused=True) or "
                        "runs it as it is (fused=False)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"Segmenter takes a segmentation nn.Module; got {type(model).__name__}")
    task = getattr(model, "task", None)
    if task != "segmentation":
        what = f"a {task} model" if task else "not one of hrnet_fast's segmentation models (no task attribute)"
        raise TypeError(f"Segmenter needs a segmentation model (e.g. hrnet_fast.create_model('seg_hrnetv2_w48')); "
                        f"{type(model).__name__} is {what}")
    align_corners = getattr(model, "align_corners", None)
    if not isinstance(align_corners, bool):
        raise TypeError(f"{type(model).__name__} has no boolean align_corners attribute: the pipeline resizes its "
                        f"logits with the model's own convention and cannot tell it")
    if model.training:
        raise ValueError("the model is in training mode: call model.eval() first (BatchNorm must use its running "
                         "statistics)")
    return align_corners


def _check_stats(name: str, values: Sequence[float]) -> Tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"{name} must be 3 values (R, G, B); got {len(values)}")
    if name == "std" and min(values) <= 0:
        raise ValueError(f"std must be positive; got {values}")
    if max(abs(v) for v in values) > 1.0:
        raise ValueError(f"{name} is in 0..1 units (v / 255 is normalised); got {values}: divide 0..255 values by 255")
    return values


class Segmenter:
    """Semantic segmentation of uint8 RGB images with an HRNetV2 model (module docstring).

    ``mode="whole"`` runs the network on the whole image; ``mode="slide"`` is mmsegmentation's sliding-window
    inference with ``crop_size`` and ``stride`` (an int or (height, width)): windows laid out as its
    ``slide_inference`` does, each window's logits resized to the window, overlaps averaged. ``flip=True`` averages
    with the horizontally mirrored image: its logits (``flip_average="logits"``, HRNet-Semantic-Segmentation's flip
    test) or their softmaxes (``"softmax"``, mmsegmentation's). ``mean`` and ``std`` are in 0..1 units (ImageNet's
    by default). ``dtype`` is the network's (fp32, fp16, bf16); ``backend`` and ``cuda_graph`` go to
    ``convert()``. The model is not modified. Results are on the model's device.
    """

    def __init__(self, model: nn.Module, mode: str = "whole", crop_size: Optional[Size] = None,
                 stride: Optional[Size] = None, flip: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, *, fused: bool = True, flip_average: str = "logits",
                 dtype: torch.dtype = torch.float32, backend: Optional[str] = None,
                 cuda_graph: Optional[bool] = None):
        self.align_corners = _check_model(model)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        if flip_average not in FLIP_AVERAGES:
            raise ValueError(f"flip_average must be one of {FLIP_AVERAGES}; got {flip_average!r}")
        self.crop, self.stride = as_pair(crop_size, "crop_size"), as_pair(stride, "stride")
        if mode == "slide" and (self.crop is None or self.stride is None):
            raise ValueError("mode='slide' needs crop_size and stride (e.g. crop_size=(512, 1024), "
                             "stride=(341, 682) as mmsegmentation's Cityscapes configs)")
        if mode == "whole" and (self.crop is not None or self.stride is not None):
            raise ValueError("crop_size and stride apply to mode='slide'; mode='whole' runs the whole image")
        self.mode, self.flip, self.flip_average, self.fused, self.dtype = mode, bool(flip), flip_average, fused, dtype
        self.mean, self.std = _check_stats("mean", mean), _check_stats("std", std)
        self.num_classes = int(model.num_classes)
        self.labels_dtype = label_dtype(None, self.num_classes)  # the ops' rule: uint8 up to 256 classes
        self.device = next(model.parameters()).device
        if fused:
            from ..convert import convert
            self.net = convert(model, dtype=dtype, backend=backend, cuda_graph=cuda_graph)
        else:
            self.net = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)

    def __repr__(self) -> str:
        slide = f", crop_size={self.crop}, stride={self.stride}" if self.mode == "slide" else ""
        return (f"Segmenter(mode={self.mode!r}{slide}, flip={self.flip}, flip_average={self.flip_average!r}, "
                f"fused={self.fused}, dtype={self.dtype}, classes={self.num_classes})")

    # ------------------------------------------------------------------------------------------- public calls
    def __call__(self, images: Any) -> Any:
        """Class maps: [H, W] for one image, [N, H, W] for a batch, a list for a list of images."""
        return self._each(images, self._class_maps)

    def probabilities(self, images: Any) -> Any:
        """The softmax over the classes at full resolution, float32: [C, H, W] for one image, [N, C, H, W] for a
        batch, a list for a list of images."""
        return self._each(images, self._probabilities)

    def _each(self, images: Any, fn) -> Any:
        if isinstance(images, (list, tuple)):
            return [self._each(image, fn) for image in images]
        batch, single = as_image_batch(images)
        if self.mode == "slide":
            check_slide(batch.shape[1], batch.shape[2], self.crop, self.stride)
        with torch.no_grad():
            out = fn(batch.to(self.device))
        return out[0] if single else out

    # ------------------------------------------------------------------------------------------- the two paths
    def _reference_scores(self, batch: torch.Tensor) -> Tuple[torch.Tensor, bool]:
        x = reference.normalize(batch, self.mean, self.std, self.dtype)
        return reference.scores(self.net, x, self.num_classes, self.align_corners, self.crop, self.stride,
                                self.flip, self.flip_average)

    def _class_maps(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return reference.class_map(self._reference_scores(batch)[0], self.labels_dtype)
        n, height, width = batch.shape[:3]
        if self.mode == "whole" and (not self.flip or self.flip_average == "logits"):
            from .ops import resize_argmax
            # Resizing is linear and commutes with mirroring: the mean of the logits is taken at low resolution.
            logits = self._network(batch)
            if self.flip:  # in fp32: the network's logits may be fp16/bf16
                logits = (logits.float() + self._network(batch.flip(2)).float().flip(-1)) * 0.5
            return resize_argmax(logits, height, width, self.align_corners, out_dtype=self.labels_dtype)
        labels = torch.empty(n, height, width, dtype=self.labels_dtype, device=self.device)
        for r0, r1, scores in merged_bands(self._views(batch), (n, self.num_classes, height, width),
                                           self.flip_average):
            labels[:, r0:r1] = scores.argmax(1)
        return labels

    def _probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return reference.probabilities(*self._reference_scores(batch))
        n, height, width = batch.shape[:3]
        out = torch.empty(n, self.num_classes, height, width, dtype=torch.float32, device=self.device)
        already = self.flip and self.flip_average == "softmax"
        for r0, r1, scores in merged_bands(self._views(batch), out.shape, self.flip_average):
            out[:, :, r0:r1] = scores if already else scores.softmax(1)
        return out

    def _network(self, images: torch.Tensor) -> torch.Tensor:
        """The network's stride-4 logits of uint8 [N, h, w, 3] images."""
        from .ops import normalize
        return self.net(normalize(images.contiguous(), self.mean, self.std, dtype=self.dtype))

    def _views(self, batch: torch.Tensor) -> List[Tuple[WindowedScores, bool]]:
        """The image's windows (and the mirrored image's), each window run through the network when a band first
        needs it."""
        height, width = batch.shape[1:3]
        if self.mode == "slide":
            windows = slide_windows(height, width, self.crop, self.stride)
        else:
            windows = [Window(0, height, 0, width, 0)]
        images = [(batch, False)] + ([(batch.flip(2), True)] if self.flip else [])
        return [(WindowedScores(windows, lambda w, im=im: self._network(im[:, w.y1:w.y2, w.x1:w.x2]),
                                self.align_corners, self.device), mirrored) for im, mirrored in images]
