"""The judge: a chest X-ray classifier that evaluation reads synthetic images with.

A torchvision ResNet-18 trained from scratch (no pretrained weights exist here), multi-label over
the label names (one sigmoid per finding). Its penultimate features (the 512-d global average pool)
are the feature space of FID and KID, as EMIXER used a chest X-ray network instead of ImageNet
Inception; its probabilities serve label fidelity and the Inception-Score analogue.

The only change to torchvision's network is the input: one grey channel, scaled inside the network
from [0, 1] to roughly zero mean and unit spread, so that every caller feeds plain [0, 1] images. The
stem stays torchvision's 7x7 stride-2 convolution and max-pool: at the judge's 64x64 the 7x7 kernel
still sees the film at full resolution, and the four stages then run at 16, 8, 4 and 2 pixels, which
keeps a CPU training run at a few minutes; a stride-1 or pool-free stem costs four times as much.

Its spec (factory.models.spec) makes no product and names no recipe: `medsynth evaluate judge` trains
it (factory.evaluate.judge). Bundles store its one network under "judge", with vocabulary None.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torchvision
from torch import nn

from factory.data.labels import CXR_LABELS
from factory.models.blocks import with_input_channels
from factory.models.spec import GeneratorSpec, UntrainedShape

NET_NAME = "judge"
# torchvision ResNets (blocks per stage); each gets a `channels`-channel first convolution in place of
# its RGB one. "resnet10" (one block a stage) is the half-cost classifier EMIXER's report generator
# can start its encoder from (factory.models.emixer, `f_encoder: resnet10`).
ARCHITECTURES = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}

DEFAULT_CONFIG: dict[str, Any] = {
    "arch": "resnet18",
    "image_size": 64,
    "channels": 1,
    "num_labels": len(CXR_LABELS),
    # [0, 1] film -> (x - mean) / std inside the network; roughly the phantoms' grey-level spread.
    "input_mean": 0.5,
    "input_std": 0.25,
    "dropout": 0.2,
}


def make_config(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """The full judge config: defaults updated by `overrides` and keyword arguments, checked.

    Raises ValueError on an unknown key or an impossible value.
    """
    config = {**DEFAULT_CONFIG, **dict(overrides or {}), **kwargs}
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown judge config keys: {unknown}")
    if config["arch"] not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, not {config['arch']!r}")
    for key in ("image_size", "channels", "num_labels"):
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, not {config[key]!r}")
    if config["image_size"] < 32:
        raise ValueError(f"image_size must be at least 32 (the ResNet downsamples 32-fold), not {config['image_size']}")
    if not isinstance(config["input_std"], (int, float)) or config["input_std"] <= 0:
        raise ValueError(f"input_std must be positive, not {config['input_std']!r}")
    if not isinstance(config["dropout"], (int, float)) or not 0.0 <= config["dropout"] < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), not {config['dropout']!r}")
    return config


class JudgeNet(nn.Module):
    """torchvision ResNet with a `channels`-channel stem; forward gives logits, `features` the
    penultimate (pooled) activations the logits are a linear function of."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        config = make_config(config)
        self.image_size = config["image_size"]
        self.input_mean, self.input_std = float(config["input_mean"]), float(config["input_std"])
        net = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, list(ARCHITECTURES[config["arch"]]),
                                               num_classes=config["num_labels"])
        net.conv1 = with_input_channels(net.conv1, config["channels"])
        self.num_features = net.fc.in_features
        self.head = nn.Sequential(nn.Dropout(config["dropout"]), net.fc)
        net.fc = nn.Identity()
        self.trunk = net

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images in [0, 1] -> (B, num_features) penultimate features."""
        return self.trunk((images - self.input_mean) / self.input_std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images in [0, 1] -> (B, num_labels) logits (sigmoid for probabilities)."""
        return self.head(self.features(images))


def build_networks(config: Mapping[str, Any]) -> dict[str, nn.Module]:
    return {NET_NAME: JudgeNet(config)}


def untrained_shape(size: int, seed: int) -> UntrainedShape:
    """An untrained judge reads the chest X-ray labels; its widths are the torchvision ResNet's."""
    return UntrainedShape({"image_size": size, "num_labels": len(CXR_LABELS)}, list(CXR_LABELS))


SPEC = GeneratorSpec(
    name="judge",
    summary="chest X-ray classifier that evaluation reads images with",
    make_config=make_config,
    build_networks=build_networks,
    untrained=untrained_shape,
)
