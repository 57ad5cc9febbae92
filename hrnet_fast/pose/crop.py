"""The affine person crop in plain PyTorch: bilinear sampling of a uint8 RGB image through ``crop_theta``'s inverse
maps, with ImageNet-style normalisation. The definition the fused ``crop_normalize`` op must match.

Sampling as ``cv2.warpAffine(..., flags=INTER_LINEAR | WARP_INVERSE_MAP, borderMode=BORDER_CONSTANT, value=0)``:
integer coordinates are pixel centers, each of the four taps that falls outside the image contributes 0, so a
crop reaching past the image fades to black over one pixel. Unlike OpenCV on uint8, the sample is not rounded back
to uint8 before normalising (a difference of at most 0.5 / 255).
"""
from __future__ import annotations

from typing import Sequence

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_image(image) -> torch.Tensor:
    """``image`` (a tensor or numpy array) as a uint8 [H, W, 3] tensor; TypeError / ValueError naming the
    problem otherwise."""
    if not isinstance(image, torch.Tensor):
        if not hasattr(image, "__array__"):
            raise TypeError(f"image must be a uint8 HxWx3 RGB tensor or numpy array, got {type(image).__name__}")
        image = torch.from_numpy(image.__array__())
    if image.dtype != torch.uint8:
        raise TypeError(f"image must be uint8 (0..255 RGB), got {image.dtype}; a float image in 0..1 converts "
                        f"with (image * 255).round().to(torch.uint8)")
    if image.dim() != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 (RGB, channels last), got shape {tuple(image.shape)}"
                         + ("; a CHW tensor converts with image.permute(1, 2, 0)" if image.dim() == 3
                            and image.shape[0] == 3 else ""))
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {tuple(image.shape)}")
    return image


def crop_reference(image: torch.Tensor, theta: torch.Tensor, out_h: int, out_w: int,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[K, 3, out_h, out_w] crops of ``image`` (uint8 [H, W, 3]) through ``theta`` [K, 2, 3] (output pixel ->
    input pixel), each value ``(v / 255 - mean[c]) / std[c]`` with ``v`` the bilinear sample in float32."""
    H, W, _ = image.shape
    device = image.device
    theta = theta.to(device=device, dtype=torch.float32)
    ys, xs = torch.meshgrid(torch.arange(out_h, dtype=torch.float32, device=device),
                            torch.arange(out_w, dtype=torch.float32, device=device), indexing="ij")
    grid = torch.stack((xs, ys, torch.ones_like(xs)), dim=-1).reshape(-1, 3)        # [P, 3]
    points = torch.einsum("kij,pj->kpi", theta, grid)                               # [K, P, 2] (x_in, y_in)
    x, y = points[..., 0], points[..., 1]
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    flat = image.reshape(H * W, 3).to(torch.float32)
    value = torch.zeros(*x.shape, 3, dtype=torch.float32, device=device)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi <= W - 1) & (yi >= 0) & (yi <= H - 1)
            index = (yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1)).long()
            tap = flat[index] * inside.unsqueeze(-1)                                # outside taps read as 0
            value += (wx * wy).unsqueeze(-1) * tap
    m = torch.tensor(mean, dtype=torch.float32, device=device)
    s = torch.tensor(std, dtype=torch.float32, device=device)
    out = (value / 255 - m) / s                                                     # [K, P, 3]
    return out.reshape(-1, out_h, out_w, 3).permute(0, 3, 1, 2).contiguous().to(dtype)
