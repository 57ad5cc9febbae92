"""A tiny pose HRNet trained in seconds on a synthetic task, so that pose tests see what a trained network gives:
peaked, Gaussian-like heatmaps (a random-weight network's heatmaps are flat noise, where DARK's Taylor step is
ill-conditioned; docs/pose.md).

The task: three joints, each a Gaussian blob of its own colour (joint 0 red, 1 green, 2 blue) on a dark, noisy
background; the network is ``PoseHighResolutionNet(TINY, num_joints=3)`` (``tiny_hrnet.TINY``) on 96x64 crops
(height x width; 24x16 heatmaps), trained with MSE towards Gaussians (sigma ``TARGET_SIGMA`` heatmap pixels) at the
blob centres / 4, with Adam. (64x48 crops, the aspect ratio of the 256x192 pose models, are not an HRNet input:
the stem's 12-pixel-wide output cannot be halved three times.)

The training crops are built as ``TopDownPose`` builds its inputs: uint8 RGB images (``draw``, the function the
tests draw their scenes with) normalised with ``MEAN`` / ``STD`` (pass the same to ``TopDownPose``), at one crop
pixel per image pixel; the blob size varies so that crops of somewhat larger or smaller boxes stay in the
training distribution. Blob centres stay ``MARGIN`` crop pixels inside the crop (3 heatmap pixels), where DARK's
interior condition holds.

Everything is seeded: the same numbers on every run of one torch build on one CPU. Training (``trained_tiny_pose()``,
150 steps of batch 16, about 0.08 s a step) takes 12-13 s on one core of the 2-core test machine; by then the held-out
argmax is within a heatmap pixel of the target for 99-100 % of joints.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

from hrnet_fast.models import PoseHighResolutionNet
from hrnet_fast.pose.crop import IMAGENET_MEAN, IMAGENET_STD
from tiny_hrnet import TINY

INPUT = (96, 64)                        # crop height, width
HEATMAP = (INPUT[0] // 4, INPUT[1] // 4)
JOINTS = 3
MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
MARGIN = 12                             # blob centres at least this many crop pixels inside the crop
BLOB_SIGMA = (2.0, 4.0)                 # blob size range in training crops (crop pixels)
TARGET_SIGMA = 1.5                      # target Gaussians, heatmap pixels


def draw(centres: torch.Tensor, sigmas: torch.Tensor, size: Tuple[int, int], noise: torch.Tensor) -> torch.Tensor:
    """uint8 [h, w, 3] images of people: ``centres`` [..., P, 3, 2] (x, y) pixel positions of each person's three
    joints, ``sigmas`` [..., P] their blob sizes, ``noise`` [..., h, w, 3] the background (values 0..255). Joint j is
    drawn in channel j only (joint 0 red, 1 green, 2 blue); overlapping blobs take the brighter value."""
    h, w = size
    ys = torch.arange(h, dtype=torch.float64).view(h, 1, 1, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, w, 1, 1)
    c = centres.to(torch.float64).unsqueeze(-4).unsqueeze(-4)                      # [..., 1, 1, P, 3, 2]
    s = sigmas.to(torch.float64)[..., None, None, :, None]                          # [..., 1, 1, P, 1]
    blobs = 255 * torch.exp(-((xs - c[..., 0]) ** 2 + (ys - c[..., 1]) ** 2) / (2 * s ** 2))
    image = torch.maximum(blobs.amax(dim=-2), noise.to(torch.float64))             # [..., h, w, 3]
    return torch.round(image).to(torch.uint8)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, h, w, 3] -> float32 [N, 3, h, w], ``(v / 255 - MEAN) / STD`` as the pipeline's crops are."""
    m = torch.tensor(MEAN, dtype=torch.float32)
    s = torch.tensor(STD, dtype=torch.float32)
    return ((images.to(torch.float32) / 255 - m) / s).permute(0, 3, 1, 2).contiguous()


def targets(centres: torch.Tensor) -> torch.Tensor:
    """float32 [N, 3, h', w']: a Gaussian (sigma ``TARGET_SIGMA``, peak 1) per joint at its crop centre / 4."""
    h, w = HEATMAP
    ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    c = centres.to(torch.float32) / 4                                               # [N, 3, 2]
    d2 = (xs - c[..., 0, None, None]) ** 2 + (ys - c[..., 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * TARGET_SIGMA ** 2))


def training_batch(n: int, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """(crops [n, 3, 96, 64] normalised, target heatmaps [n, 3, 24, 16]) of one person per crop."""
    h, w = INPUT
    lo = torch.tensor([MARGIN, MARGIN], dtype=torch.float32)
    hi = torch.tensor([w - MARGIN, h - MARGIN], dtype=torch.float32)
    centres = lo + (hi - lo) * torch.rand(n, 1, JOINTS, 2, generator=gen)
    sigmas = BLOB_SIGMA[0] + (BLOB_SIGMA[1] - BLOB_SIGMA[0]) * torch.rand(n, 1, generator=gen)
    level = 40 * torch.rand(n, 1, 1, 1, generator=gen)                              # background 0..40, per crop
    noise = level * torch.rand(n, h, w, 3, generator=gen)
    return normalise(draw(centres, sigmas, INPUT, noise)), targets(centres[:, 0])


def trained_tiny_pose(steps: int = 150, batch: int = 16, seed: int = 0, lr: float = 2e-3) -> nn.Module:
    """The tiny pose HRNet after ``steps`` Adam steps on fresh synthetic batches (MSE to the target heatmaps);
    in eval mode. The heatmap conv starts near zero (normal, std 0.001, as the official pose code initialises it):
    from the backbone's Kaiming init its output is large and 200 steps go to learning to output zeros."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same reduction order, so the same weights, on every run
    try:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = PoseHighResolutionNet(TINY, num_joints=JOINTS)
        nn.init.normal_(model.final_layer.weight, std=0.001)
        nn.init.zeros_(model.final_layer.bias)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(steps):
            crops, heatmaps = training_batch(batch, gen)
            loss = nn.functional.mse_loss(model(crops), heatmaps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
