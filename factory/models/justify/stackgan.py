"""The two-stage text-to-image GAN of §3.2 and appendix A (StackGAN-v1, Zhang et al.), conditioned on a
representation r = [code, noise].

- Stage 1, G1: r -> linear to 16 x g1_width channels at 4x4 (the appendix's 400 -> 1536x4x4), then
  (upsample x2, 3x3 conv, batch norm, ReLU) blocks halving the channels, to stage1_size; tanh.
- D1: 4x4 stride-2 convolutions (LeakyReLU 0.2, batch norm after the first) down to 4x4, r replicated
  over the 4x4 map and concatenated (the appendix's "concat to repr."), a 3x3 conv, and a 4x4 conv to
  one logit.
- Stage 2, G2: the stage-1 image encoded down to 16x16 at 8 x g2_width channels, r replicated and
  concatenated, a 3x3 conv, residual blocks, then upsampling blocks to image_size; tanh.
- D2: as D1 at image_size.

Conditioning augmentation (StackGAN's CA: the code mapped to a Gaussian, mean and log-variance,
sampled, with a KL term) is off by default as in the paper (§3.2); with it on each generator conditions
on [CA sample, noise], and on the mean when no CA noise is given (inference, M).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn


class ConditioningAugmentation(nn.Module):
    """code (B, code_dim) -> (sample, mean, log-variance), each (B, ca_dim)."""

    def __init__(self, code_dim: int, ca_dim: int):
        super().__init__()
        self.fc = nn.Linear(code_dim, 2 * ca_dim)

    def forward(self, code: torch.Tensor, eps: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = F.leaky_relu(self.fc(code), 0.2).chunk(2, dim=1)
        sample = mu if eps is None else mu + eps * torch.exp(0.5 * logvar)
        return sample, mu, logvar


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), averaged over the batch (StackGAN's regulariser of CA)."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


class _Conditioning(nn.Module):
    """What a generator conditions on: r itself, or [CA(code), noise]."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.code_dim = config["code_dim"]
        self.ca = (ConditioningAugmentation(config["code_dim"], config["ca_dim"])
                   if config["conditioning_augmentation"] else None)
        self.features = (config["ca_dim"] if self.ca is not None else config["code_dim"]) + config["noise_dim"]

    def forward(self, r: torch.Tensor, eps: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (conditioning (B, features), KL term (0 without CA))."""
        if self.ca is None:
            return r, r.new_zeros(())
        sample, mu, logvar = self.ca(r[:, : self.code_dim], eps)
        return torch.cat([sample, r[:, self.code_dim:]], dim=1), kl_loss(mu, logvar)


def _up(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(inputs, outputs, 3, 1, 1, bias=False),
            nn.BatchNorm2d(outputs), nn.ReLU()]


class Stage1Generator(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.condition = _Conditioning(config)
        width = 16 * config["g1_width"]
        self.fc = nn.Sequential(nn.Linear(self.condition.features, width * 16, bias=False),
                                nn.BatchNorm1d(width * 16), nn.ReLU())
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(config["stage1_size"] // 4))):
            layers += _up(width, max(width // 2, 1))
            width = max(width // 2, 1)
        self.up = nn.Sequential(*layers, nn.Conv2d(width, config["channels"], 3, 1, 1))
        self.width = 16 * config["g1_width"]

    def forward(self, r: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """r (B, code_dim + noise_dim) -> (images (B, C, s1, s1) in [-1, 1], CA's KL term)."""
        h, kl = self.condition(r, eps)
        x = self.fc(h).view(h.shape[0], self.width, 4, 4)
        return torch.tanh(self.up(x)), kl


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(), nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Stage2Generator(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.condition = _Conditioning(config)
        w, c = config["g2_width"], config["channels"]
        # The appendix's encoder: 1 -> 2w (3x3), then 4x4 stride-2 convs doubling to 8w at 16x16.
        down: list[nn.Module] = [nn.Conv2d(c, 2 * w, 3, 1, 1), nn.ReLU()]
        width = 2 * w
        for _ in range(int(math.log2(config["stage1_size"] // 16))):
            down += [nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU()]
            width *= 2
        self.down = nn.Sequential(*down)
        self.joint = nn.Sequential(nn.Conv2d(width + self.condition.features, width, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU(),
                                   *[_Residual(width) for _ in range(config["residual_blocks"])])
        up: list[nn.Module] = []
        for _ in range(int(math.log2(config["image_size"] // 16))):
            up += _up(width, max(width // 2, 1))
            width = max(width // 2, 1)
        self.up = nn.Sequential(*up, nn.Conv2d(width, c, 3, 1, 1))

    def forward(self, low: torch.Tensor, r: torch.Tensor,
                eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-1 images (B, C, s1, s1) and r -> (images (B, C, S, S) in [-1, 1], CA's KL term)."""
        h, kl = self.condition(r, eps)
        x = self.down(low)
        x = self.joint(torch.cat([x, h[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1))
        return torch.tanh(self.up(x)), kl


class Discriminator(nn.Module):
    """D1 (size stage1_size) or D2 (size image_size): images and r -> logits (B,)."""

    def __init__(self, config: Mapping[str, Any], size: int, width: int):
        super().__init__()
        r_dim = config["code_dim"] + config["noise_dim"]
        layers: list[nn.Module] = []
        previous = config["channels"]
        for i in range(int(math.log2(size // 4))):
            out = width * 2**i
            layers += [nn.Conv2d(previous, out, 4, 2, 1, bias=i == 0)]
            if i:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2))
            previous = out
        self.down = nn.Sequential(*layers)
        self.joint = nn.Sequential(nn.Conv2d(previous + r_dim, previous, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(previous), nn.LeakyReLU(0.2), nn.Conv2d(previous, 1, 4))

    def forward(self, images: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        x = self.down(images)
        return self.joint(torch.cat([x, r[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)).flatten()
