"""``TopDownPose``: person boxes in, keypoints out. Crops (``geometry``, ``crop``), the network, the flip test and
the decoding (``decode``) as one call, fused or as the plain-PyTorch reference.

    pose = hrnet_fast.TopDownPose(model)                       # flip test, classic decoding, 256x192 crops
    keypoints, scores = pose(image, boxes)                     # uint8 HxWx3 RGB, [K, 4] xyxy -> [K, J, 2], [K, J]

Fused (the default): the model is ``convert()``-ed, each image's crops (and their mirror images, for the flip test)
come from one ``crop_normalize`` call, every person of every image goes through the network as one batch, and one
``heatmap_decode`` call merges the flipped heatmaps, decodes and maps back to the image, on the model's device.
A converted model on CUDA replays one CUDA graph per batch rounded up to a power of two, so the varying number of
people per call reuses a few graphs (``hrnet_fast.convert``). ``fused=False`` runs the reference: the model as given,
``crop.crop_reference`` and ``decode.decode`` on the host, as mmpose decodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..convert import ConvertedModel, convert
from ..models import check_input_size
from .crop import IMAGENET_MEAN, IMAGENET_STD, check_image, crop_reference
from .decode import METHODS, decode
from .geometry import box_to_center_scale, check_boxes, crop_theta
from .joints import COCO_FLIP_PAIRS, flip_index as make_flip_index
from .model_check import device_and_dtype, pose_joints


@dataclass
class Batch:
    """The network input for one call: crops [N, 3, h, w] (the K people's, then with the flip test their mirror
    images), each person's crop center and size, and how many people each image has."""
    crops: torch.Tensor
    centers: torch.Tensor
    scales: torch.Tensor
    counts: List[int]


class TopDownPose:
    """Top-down pose estimation on person boxes; see the module docstring.

    Args:
        model: a pose HRNet (ours, the official or mmpose layout; converted or not), in eval mode. Device and dtype
            follow it.
        input_size: the network's crop (height, width).
        flip_test: also run the mirrored crops and average their flipped-back heatmaps in.
        decode: "classic" (argmax + quarter-pixel step) or "dark" (Taylor refinement on the blurred log-heatmap).
        padding: box enlargement factor around the person.
        mean, std: per-channel normalisation of the RGB values in 0..1.
        flip_pairs: (left, right) joint index pairs; COCO's by default (17 joints).
        shift_heatmap: the official one-pixel shift of the flipped-back heatmaps.
        blur_kernel: the Gaussian's size for ``dark``.
        fused: False runs the plain-PyTorch reference pipeline on the model as given.
    """

    def __init__(self, model: nn.Module, input_size: Tuple[int, int] = (256, 192), flip_test: bool = True,
                 decode: str = "classic", padding: float = 1.25, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, flip_pairs: Sequence[Sequence[int]] = COCO_FLIP_PAIRS,
                 shift_heatmap: bool = False, blur_kernel: int = 11, fused: bool = True):
        self.num_joints = pose_joints(model)
        if model.training:
            raise RuntimeError("the pose model is in training mode (BatchNorm would use batch statistics): call "
                               "model.eval() first")
        if decode not in METHODS:
            raise ValueError(f"decode must be one of {', '.join(METHODS)}, got {decode!r}")
        if decode == "dark" and (blur_kernel < 1 or blur_kernel % 2 == 0):
            raise ValueError(f"blur_kernel must be a positive odd size, got {blur_kernel}")
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input_size must be (height, width), got {input_size}")
        check_input_size(*input_size)
        if not padding > 0:
            raise ValueError(f"padding must be positive, got {padding}")
        for name, v in (("mean", mean), ("std", std)):
            if len(v) != 3:
                raise ValueError(f"{name} must have 3 values (R, G, B), got {len(v)}")
        if any(s == 0 for s in std):
            raise ValueError(f"std must not contain 0, got {tuple(std)}")
        # COCO's pairs fit COCO's joint set only; pairs of one's own are checked by index.
        self.flip_index = make_flip_index(flip_pairs, self.num_joints,
                                          17 if flip_pairs is COCO_FLIP_PAIRS else None)
        self.fused = fused
        if fused:
            from . import ops  # the fused ops load only when the fused pipeline is built
            self._ops = ops
            model = model if isinstance(model, ConvertedModel) else convert(model)
        self.model = model
        self.device, self.dtype = device_and_dtype(model)
        self.flip_index = self.flip_index.to(self.device)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.flip_test, self.method, self.padding = flip_test, decode, float(padding)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.shift_heatmap, self.blur_kernel = shift_heatmap, blur_kernel

    def __repr__(self) -> str:
        return (f"TopDownPose(input_size={self.input_size}, flip_test={self.flip_test}, decode={self.method!r}, "
                f"joints={self.num_joints}, fused={self.fused}, device={self.device}, dtype={self.dtype})")

    def _crop(self, image: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        h, w = self.input_size
        if self.fused:
            return self._ops.crop_normalize(image, theta, h, w, self.mean, self.std, dtype=self.dtype,
                                            channels_last=getattr(self.model, "channels_last", False))
        return crop_reference(image, theta, h, w, self.mean, self.std, self.dtype)

    def preprocess(self, images: Sequence, boxes: Sequence) -> Batch:
        """The crops of every box of every image, in one batch (checked: uint8 HxWx3 images, finite xyxy
        boxes with x1 <= x2 and y1 <= y2)."""
        h, w = self.input_size
        images = [check_image(im).to(self.device) for im in images]
        centers, scales = zip(*(box_to_center_scale(check_boxes(b).to(self.device), w / h, self.padding)
                                for b in boxes))
        counts = [len(c) for c in centers]
        thetas = [crop_theta(c, s, self.input_size) for c, s in zip(centers, scales)]
        if self.flip_test:  # the mirror images after every person's crop
            thetas += [crop_theta(c, s, self.input_size, flip=True) for c, s in zip(centers, scales)]
        if len(images) == 1:  # one op call for all crops of the image, no concatenation
            crops = self._crop(images[0], torch.cat(thetas) if len(thetas) > 1 else thetas[0])
        else:
            crops = torch.cat([self._crop(im, t) for im, t in zip(images * (len(thetas) // len(images)), thetas)])
        return Batch(crops, torch.cat(centers), torch.cat(scales), counts)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """The network's heatmaps [N, J, h', w'] for the crops, checked to be heatmaps of this model's joints."""
        heatmaps = self.model(crops)
        if not (isinstance(heatmaps, torch.Tensor) and heatmaps.dim() == 4
                and heatmaps.shape[:2] == (crops.shape[0], self.num_joints)):
            shape = tuple(heatmaps.shape) if isinstance(heatmaps, torch.Tensor) else type(heatmaps).__name__
            raise TypeError(f"the pose model returned {shape} for {crops.shape[0]} crops; expected heatmaps "
                            f"[{crops.shape[0]}, {self.num_joints}, h, w]")
        return heatmaps

    def postprocess(self, heatmaps: torch.Tensor, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(keypoints [K, J, 2] in image pixels, scores [K, J]) of every person, float32 on the model's device."""
        K = batch.centers.shape[0]
        flipped = heatmaps[K:] if self.flip_test else None
        heatmaps = heatmaps[:K]
        if self.fused:
            out = self._ops.heatmap_decode(heatmaps, batch.centers, batch.scales, self.method, flipped=flipped,
                                           flip_index=self.flip_index if self.flip_test else None,
                                           shift_flipped=self.shift_heatmap, blur_kernel=self.blur_kernel)
            return out[..., :2], out[..., 2]
        host = torch.device("cpu")  # the reference decodes on the host, as mmpose does
        keypoints, scores = decode(heatmaps.to(host), batch.centers.to(host), batch.scales.to(host), self.method,
                                   flipped=None if flipped is None else flipped.to(host),
                                   flip_index=self.flip_index.to(host), shift_flipped=self.shift_heatmap,
                                   blur_kernel=self.blur_kernel)
        return keypoints.to(self.device), scores.to(self.device)

    def run(self, images: Sequence, boxes: Sequence) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per image, (keypoints [K_i, J, 2], scores [K_i, J]) for its boxes; every person in one batch."""
        if len(images) != len(boxes):
            raise ValueError(f"got {len(images)} images and {len(boxes)} box tensors; give one [K, 4] box tensor "
                             f"per image")
        batch = self.preprocess(images, boxes)
        K = batch.centers.shape[0]
        if K == 0:
            keypoints = torch.zeros(0, self.num_joints, 2, device=self.device)
            scores = torch.zeros(0, self.num_joints, device=self.device)
        else:
            with torch.no_grad():
                keypoints, scores = self.postprocess(self.forward(batch.crops), batch)
        return list(keypoints.split(batch.counts)), list(scores.split(batch.counts))

    def __call__(self, image: Union[torch.Tensor, Sequence], boxes: Union[torch.Tensor, Sequence]):
        """``pose(image, boxes)`` -> (keypoints [K, J, 2], scores [K, J]); ``pose([images], [boxes])`` -> (a list
        of keypoints, a list of scores), one per image, run as one batch."""
        if isinstance(image, (list, tuple)):
            if not isinstance(boxes, (list, tuple)):
                raise TypeError("a list of images takes a list of box tensors, one [K, 4] tensor per image")
            return self.run(image, boxes)
        keypoints, scores = self.run([image], [boxes])
        return keypoints[0], scores[0]
