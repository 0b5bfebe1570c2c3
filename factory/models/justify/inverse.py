"""The inverse mapping I of §3.3 and appendix B: a stage-1-sized X-ray -> a representation r =
[code, noise]. Convolutional blocks (4x4 stride 2, LeakyReLU 0.2, each followed by dropout 0.1; batch
norm after the first) down to 4x4, then fully connected layers (ReLU, dropout 0.5) to r.

Dropout draws its masks from the generator the caller passes (the training step's), so that training
is a function of the run's seed; in eval mode, or without a generator, there is no dropout."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

CONV_DROPOUT, FC_DROPOUT = 0.1, 0.5


def dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout with a mask from `generator` (identity when it is None)."""
    if generator is None:
        return x
    keep = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device) >= p
    return x * keep.to(x.dtype) / (1 - p)


class InverseMapping(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        blocks: list[nn.Module] = []
        previous, width = config["channels"], config["i_width"]
        for i in range(int(math.log2(config["stage1_size"] // 4))):
            out = width * min(2**i, 8)
            layers: list[nn.Module] = [nn.Conv2d(previous, out, 4, 2, 1, bias=i == 0)]
            if i:
                layers.append(nn.BatchNorm2d(out))
            blocks.append(nn.Sequential(*layers, nn.LeakyReLU(0.2)))
            previous = out
        self.conv = nn.ModuleList(blocks)
        self.hidden = nn.Sequential(nn.Linear(previous * 16, config["i_hidden"]), nn.ReLU())
        self.out = nn.Linear(config["i_hidden"], config["code_dim"] + config["noise_dim"])

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, s1, s1) in [-1, 1] -> r (B, code_dim + noise_dim); dropout in training mode with a
        `generator`."""
        noise = generator if self.training else None
        x = images
        for block in self.conv:
            x = dropout(block(x), CONV_DROPOUT, noise)
        return self.out(dropout(self.hidden(x.flatten(1)), FC_DROPOUT, noise))
