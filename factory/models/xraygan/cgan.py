"""XRAY-GAN's CGAN (§4.1): a DCGAN conditioned on the finding labels as Mirza & Osindero condition a GAN.

- G(z, y): the multi-hot label vector y over the findings is embedded (a linear layer,
  `label_embedding` dimensions) and concatenated with the noise z; the DCGAN generator turns the joint
  vector into an image.
- D(x, y): y's embedding (a linear layer of its own) joins the input as constant extra channels, and
  again the discriminator's features before the logit, so that D judges whether image and labels
  belong together.
Both are trained with the paper's log loss (eq. 6; the recipe is factory.train.recipes.xraygan).
Two departures from the paper are available as config keys, off by default (the paper's training):
`mismatch_weight`, Reed et al.'s matching-aware discriminator (real images with other studies' labels
-> fake), and `real_label`, Salimans et al.'s one-sided label smoothing of D's real targets; and one
to D's architecture, `projection`, Miyato & Koyama's projection term in D's logit.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from factory.data.labels import CXR_LABELS
from factory.models.spec import GeneratorSpec, ImageSampling, UntrainedShape
from factory.models.xraygan.config import checked_config, z_dim
from factory.models.xraygan.networks import DCGANGenerator, DCGANTrunk, sample_images

NET_NAMES = ("G", "D")

# Architecture first, then the training settings the recipe reads (the paper's §5.4 where it gives
# them); the whole dict is stored in bundles.
DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 64,
    "channels": 1,
    "num_labels": len(CXR_LABELS),
    "z_dim": 100,  # DCGAN's
    "label_embedding": 32,
    "g_width": 32,  # DCGAN's 64-px network has 64 (x8 at 4x4); 32 keeps CPU training in reach
    "d_width": 32,
    # training: Adam, learning rate 2e-4, first-moment decay 0.5 (§5.4)
    "lr": {"G": 2e-4, "D": 2e-4},
    "betas": [0.5, 0.999],
    # Not the paper's (docs/models.md): the weight w of D's mismatch term (real image with another
    # study's labels -> 0; D's loss real + (1 - w) fake + w mismatch, Reed et al.'s w = 1/2), and D's
    # target for real images (1: none; Salimans et al. smooth it to 0.9). 0 and 1: the paper's D.
    "mismatch_weight": 0.0,
    "real_label": 1.0,
    # Not the paper's either: D also adds the projection term <V y, h> of its 4x4 features h to its
    # logit (Miyato & Koyama's projection discriminator), a direct image-label interaction.
    "projection": False,
}


def make_config(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """The full model config: defaults updated by `overrides` and keyword arguments, checked.

    Raises ValueError on an unknown key or an impossible value."""
    return checked_config("xraygan-cgan", DEFAULT_CONFIG, overrides, kwargs,
                          ("channels", "num_labels", "z_dim", "label_embedding", "g_width", "d_width"), NET_NAMES,
                          _check_training)


def _check_training(config: Mapping[str, Any]) -> None:
    if not isinstance(config["projection"], bool):
        raise ValueError(f"projection must be true or false, not {config['projection']!r}")
    weight, target = config["mismatch_weight"], config["real_label"]
    # At 1 D would never see a fake.
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight < 1.0:
        raise ValueError(f"mismatch_weight must lie in [0, 1), not {weight!r}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.5 < target <= 1.0:
        raise ValueError(f"real_label must lie in (0.5, 1], not {target!r}")


class Generator(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.embed = nn.Linear(config["num_labels"], config["label_embedding"])
        self.net = DCGANGenerator(config["z_dim"] + config["label_embedding"], config["image_size"],
                                  config["channels"], config["g_width"])

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, z_dim) noise and (B, num_labels) multi-hot labels -> (B, C, S, S) images in [-1, 1]."""
        return self.net(torch.cat([z, self.embed(labels)], dim=1))


class Discriminator(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        e = config["label_embedding"]
        self.embed = nn.Linear(config["num_labels"], e)
        self.trunk = DCGANTrunk(config["image_size"], config["channels"] + e, config["d_width"])
        self.head = nn.Linear(self.trunk.out_features + e, 1)
        # Made last and zero, so D starts as the paper's does for the same seed (a default-initialised
        # V over 4,096 features would swamp the logit at the start).
        self.project = None
        if config["projection"]:
            self.project = nn.Linear(config["num_labels"], self.trunk.out_features, bias=False)
            nn.init.zeros_(self.project.weight)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) and their labels (B, num_labels) -> real/fake logits (B,)."""
        y = self.embed(labels)
        maps = y[:, :, None, None].expand(-1, -1, *images.shape[2:])
        h = self.trunk(torch.cat([images, maps], dim=1))
        logits = self.head(torch.cat([h, y], dim=1)).squeeze(1)
        if self.project is not None:  # Miyato & Koyama's inner product of the labels' vector and the features
            logits = logits + (self.project(labels) * h).sum(dim=1)
        return logits


def build_networks(config: Mapping[str, Any]) -> dict[str, nn.Module]:
    config = make_config(config)
    return {"G": Generator(config), "D": Discriminator(config)}


def generate(nets: Mapping[str, nn.Module], labels: torch.Tensor | None, z: torch.Tensor) -> np.ndarray:
    """Images (B, H, W) uint8 for labels (B, L) and noise (B, z_dim); eval mode (batch norm on its
    running statistics), so a sample depends on its own labels and noise alone."""
    if labels is None:
        raise ValueError("xraygan-cgan generates images for given labels")
    return sample_images(nets["G"], z, labels)


def untrained_shape(size: int, seed: int, width: int | None = None) -> UntrainedShape:
    """An untrained CGAN is conditioned on the chest X-ray labels."""
    overrides: dict[str, Any] = {"image_size": size, "num_labels": len(CXR_LABELS)}
    if width is not None:
        overrides.update(g_width=width, d_width=width)
    return UntrainedShape(overrides, list(CXR_LABELS))


SPEC = GeneratorSpec(
    name="xraygan-cgan",
    summary="labels -> chest X-ray image (XRAY-GAN's conditional DCGAN)",
    make_config=make_config,
    build_networks=build_networks,
    untrained=untrained_shape,
    untrained_options=("width",),
    recipe="factory.train.recipes.xraygan:CganRecipe",
    products=(ImageSampling(z_dim=z_dim, generate=generate),),
)
