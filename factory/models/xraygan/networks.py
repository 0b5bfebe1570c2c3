"""XRAY-GAN's networks: DCGAN generator and discriminator (Radford et al.; the paper's G and D), the
shared classifier C and the style-transfer network T of UCGAN's style term, plus the conversions
between the networks' [-1, 1] and 8-bit images.

DCGAN as Radford et al. give it: the generator projects its input to a 4x4 map and doubles it with
4x4 stride-2 transposed convolutions, batch norm and ReLU, tanh at the output; the discriminator
halves the image with 4x4 stride-2 convolutions and LeakyReLU(0.2), batch norm on every layer but the
first, down to 4x4, then one linear logit. Channel widths double per layer (capped at 8x `width`).
The number of layers follows the image size (4 up-layers at 64 px, 5 at 128), as DCGAN's 64-px
network is the paper's at half its 128 px.
"""

from __future__ import annotations

import math
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MAX_MULTIPLIER = 8


def halvings(image_size: int) -> int:
    """Stride-2 layers between 4x4 and the image size."""
    return int(math.log2(image_size // 4))


def _widths(width: int, layers: int) -> list[int]:
    """Channels after each of `layers` discriminator layers (the generator's, reversed)."""
    return [width * min(2**i, MAX_MULTIPLIER) for i in range(layers)]


class DCGANGenerator(nn.Module):
    """(B, in_features) -> (B, channels, S, S) images in [-1, 1]."""

    def __init__(self, in_features: int, image_size: int, channels: int, width: int):
        super().__init__()
        n = halvings(image_size)
        widths = _widths(width, n)[::-1]  # 4x4 first
        self.stem = nn.Linear(in_features, widths[0] * 16, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        for i in range(n - 1):
            layers += [nn.ConvTranspose2d(widths[i], widths[i + 1], 4, 2, 1, bias=False),
                       nn.BatchNorm2d(widths[i + 1]), nn.ReLU()]
        layers.append(nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1))
        self.up = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(h).view(h.shape[0], -1, 4, 4)))
        return torch.tanh(self.up(x))


class DCGANTrunk(nn.Module):
    """(B, in_channels, S, S) -> (B, out_features) flattened 4x4 features of the discriminator."""

    def __init__(self, image_size: int, in_channels: int, width: int):
        super().__init__()
        widths = _widths(width, halvings(image_size))
        layers: list[nn.Module] = []
        for i, out in enumerate(widths):
            layers.append(nn.Conv2d(in_channels if i == 0 else widths[i - 1], out, 4, 2, 1, bias=i == 0))
            if i:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2))
        self.layers = nn.Sequential(*layers)
        self.out_features = widths[-1] * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)


class Classifier(nn.Module):
    """The shared classifier C: a VGG-style CNN (two 3x3 conv + batch norm + ReLU per stage, 2x average
    pool between stages, channels doubling from `width` up to 8x) down to 4x4, global average pool and a
    linear layer over the classes. `forward(x, maps=True)` also returns every stage's feature maps (the
    style and content losses' layers, as VGG's are for Johnson et al.)."""

    def __init__(self, image_size: int, channels: int, width: int, classes: int):
        super().__init__()
        stages, previous = [], channels
        for out in _widths(width, halvings(image_size) + 1):  # stages at S, S/2, ..., 4
            stages.append(nn.Sequential(
                nn.Conv2d(previous, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()))
            previous = out
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(previous, classes)

    def forward(self, x: torch.Tensor, maps: bool = False):
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(F.avg_pool2d(x, 2) if i else x)
            features.append(x)
        logits = self.head(x.mean(dim=(2, 3)))
        return (logits, features) if maps else logits


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class StyleTransfer(nn.Module):
    """T: Johnson et al.'s image transformation network, narrowed (`width` instead of 32, `blocks`
    residual blocks instead of 5, one 2x down/up instead of two). It reads the content image (a
    generated film) and the style image (a real film) as two channels and returns the stylised image
    in [-1, 1]."""

    def __init__(self, channels: int, width: int, blocks: int):
        super().__init__()

        def conv(i: int, o: int, k: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(i, o, k, stride, k // 2, padding_mode="reflect"), nn.InstanceNorm2d(o, affine=True),
                    nn.ReLU()]

        self.net = nn.Sequential(
            *conv(2 * channels, width, 9), *conv(width, 2 * width, 3, 2),
            *[_Residual(2 * width) for _ in range(blocks)],
            nn.Upsample(scale_factor=2, mode="nearest"), *conv(2 * width, width, 3),
            nn.Conv2d(width, channels, 9, padding=4, padding_mode="reflect"))

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(torch.cat([content, style], dim=1)))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 1, H, W) in [-1, 1] -> (B, H, W) uint8."""
    return ((images[:, 0].float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def from_uint8(images: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8 -> (B, 1, H, W) in [-1, 1] on `like`'s device and dtype."""
    x = torch.as_tensor(np.asarray(images), device=like.device).to(like.dtype)
    return (x / 127.5 - 1)[:, None]


def first_parameter(net: nn.Module) -> torch.Tensor:
    return next(net.parameters())


def sample_images(G: nn.Module, *inputs: torch.Tensor) -> np.ndarray:
    """G's images (B, H, W) uint8 for its inputs, moved to G's device and dtype; eval mode (batch norm
    on its running statistics), so a sample depends on its own inputs alone."""
    G.eval()
    first = first_parameter(G)
    with torch.inference_mode():
        images = G(*(x.to(device=first.device, dtype=first.dtype) for x in inputs))
    return to_uint8(images)
