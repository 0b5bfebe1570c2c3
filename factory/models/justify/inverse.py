"""The inverse mapping I of §3.3 and appendix B: a stage-1-sized X-ray -> a representation r =
[code, noise]. Convolutional blocks (4x4 stride 2, LeakyReLU 0.2, each followed by dropout 0.1; batch
norm after the first) down to 4x4, then fully connected layers (ReLU, dropout 0.5) to r."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn


class InverseMapping(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        layers: list[nn.Module] = []
        previous, width = config["channels"], config["i_width"]
        for i in range(int(math.log2(config["stage1_size"] // 4))):
            out = width * min(2**i, 8)
            layers.append(nn.Conv2d(previous, out, 4, 2, 1, bias=i == 0))
            if i:
                layers.append(nn.BatchNorm2d(out))
            layers += [nn.LeakyReLU(0.2), nn.Dropout(0.1)]
            previous = out
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(previous * 16, config["i_hidden"]), nn.ReLU(), nn.Dropout(0.5),
                                nn.Linear(config["i_hidden"], config["code_dim"] + config["noise_dim"]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, s1, s1) in [-1, 1] -> r (B, code_dim + noise_dim)."""
        return self.fc(self.conv(images).flatten(1))
