"""Two small image generators that exist only through the generator seam (their own file plus one
registry line each, which tests/test_image_production.py adds), for the "images" product
(factory.models.spec.ImageSampling): labelled images without reports.

- `toy-image` (SPEC): label-conditioned; G maps (labels, z) to an image through one linear layer.
- `toy-pseudo` (PSEUDO_SPEC, registered from tests/toy_pseudo_generator.py): unconditional; G maps z
  alone to an image, and a linear classifier C pseudo-labels it: a finding is present where C's
  sigmoid is at least 0.5, and the confidence is the mean over findings of max(p, 1 - p), which
  varies from image to image, so a threshold keeps some samples and drops others.

Random weights only: enough to exercise production, not models anyone should use.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from factory.data.labels import CXR_LABELS
from factory.models.spec import GeneratorSpec, ImageSampling, UntrainedShape

DEFAULT_CONFIG: dict[str, Any] = {"image_size": 16, "num_labels": len(CXR_LABELS), "z_dim": 4, "threshold": 0.6}


def make_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    config = {**DEFAULT_CONFIG, **dict(overrides or {})}
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown toy image config keys: {unknown}")
    return config


class LinearGenerator(nn.Module):
    def __init__(self, inputs: int, size: int):
        super().__init__()
        self.size = size
        self.linear = nn.Linear(inputs, size * size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x)).view(-1, self.size, self.size)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def z_dim(config: Mapping[str, Any]) -> int:
    return config["z_dim"]


def untrained_shape(size: int, seed: int) -> UntrainedShape:
    return UntrainedShape({"image_size": size}, list(CXR_LABELS), None, "; toy image model")


def conditional_networks(config: Mapping[str, Any]) -> dict[str, nn.Module]:
    config = make_config(config)
    return {"G": LinearGenerator(config["num_labels"] + config["z_dim"], config["image_size"])}


def conditional_generate(nets: Mapping[str, nn.Module], labels: torch.Tensor | None, z: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return to_uint8(nets["G"].eval()(torch.cat([labels, z], dim=1)))


def unconditional_networks(config: Mapping[str, Any]) -> dict[str, nn.Module]:
    config = make_config(config)
    return {"G": LinearGenerator(config["z_dim"], config["image_size"]),
            "C": nn.Linear(config["image_size"] ** 2, config["num_labels"])}


def unconditional_generate(nets: Mapping[str, nn.Module], labels: torch.Tensor | None, z: torch.Tensor) -> np.ndarray:
    assert labels is None, "an unconditional model is handed no labels"
    with torch.inference_mode():
        return to_uint8(nets["G"].eval()(z))


def pseudo_label(nets: Mapping[str, nn.Module], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = torch.from_numpy(images.astype(np.float32) / 255.0).flatten(1)
    with torch.inference_mode():
        p = torch.sigmoid(nets["C"].eval()(pixels * 4 - 2))
    labels = (p >= 0.5).float().numpy()
    confidence = torch.maximum(p, 1 - p).mean(dim=1).numpy().astype(np.float32)
    return labels, confidence


def threshold(config: Mapping[str, Any]) -> float:
    return float(config["threshold"])


SPEC = GeneratorSpec(
    name="toy-image",
    summary="toy label-conditioned image generator (tests only)",
    make_config=make_config,
    build_networks=conditional_networks,
    untrained=untrained_shape,
    products=(ImageSampling(z_dim=z_dim, generate=conditional_generate),),
)

PSEUDO_SPEC = GeneratorSpec(
    name="toy-pseudo",
    summary="toy unconditional image generator with a pseudo-labelling classifier (tests only)",
    make_config=make_config,
    build_networks=unconditional_networks,
    untrained=untrained_shape,
    products=(ImageSampling(z_dim=z_dim, generate=unconditional_generate, pseudo_label=pseudo_label,
                            threshold=threshold),),
)
