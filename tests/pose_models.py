"""Stand-in pose models for the pipeline tests.

``Sampler`` is a "pose model" whose every heatmap is the crop's red channel at every 4th pixel: heatmap pixel
(col i, row r) is crop pixel (4i, 4r), which the official geometry maps to the same image point as the heatmap
pixel. So on an image holding one bright blob, every keypoint must land on the blob, by geometry alone, and the
expected coordinates can be worked out by hand.
"""
import torch
import torch.nn as nn


class Sampler(nn.Module):
    task = "pose"

    def __init__(self, joints: int = 17):
        super().__init__()
        self.final_layer = nn.Conv2d(3, joints, 1)  # every joint reads the red channel only
        with torch.no_grad():
            self.final_layer.weight.zero_()
            self.final_layer.weight[:, 0] = 1.0
            self.final_layer.bias.zero_()
        self.eval()

    def forward(self, x):
        return self.final_layer(x[:, :, ::4, ::4])


def blob_image(x0: float, y0: float, h: int = 120, w: int = 100, sigma: float = 8.0) -> torch.Tensor:
    """uint8 [h, w, 3]: a Gaussian blob centred on (x0, y0) in the red channel, black elsewhere."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    red = torch.round(255 * torch.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma ** 2)))
    image = torch.zeros(h, w, 3, dtype=torch.uint8)
    image[..., 0] = red.to(torch.uint8)
    return image


class MMPoseLayout(nn.Module):
    """mmpose's TopdownPoseEstimator shape: ``backbone`` (an HRNet) and ``head.final_layer`` (1.x) or
    ``keypoint_head.final_layer`` (0.x)."""

    def __init__(self, backbone: nn.Module, joints: int = 17, head: str = "head"):
        super().__init__()
        self.backbone = backbone
        self.head_name = head
        setattr(self, head, nn.Module())
        getattr(self, head).final_layer = nn.Conv2d(backbone.stage_channels[0], joints, 1)

    def forward(self, x):
        return getattr(self, self.head_name).final_layer(self.backbone.features(x)[0])
