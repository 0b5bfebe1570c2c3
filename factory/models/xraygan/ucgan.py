"""XRAY-GAN's UCGAN (§4.2): an unconditional DCGAN guided by a shared classifier, whose images are
pseudo-labelled by that classifier.

Networks: G (DCGAN generator of z alone), D (DCGAN discriminator), C (the shared classifier,
networks.Classifier: the paper's is a ResNet-50, here a from-scratch VGG-style CNN whose stage maps
also serve as the loss network of the style terms, in place of the paper's VGG) and T (the
style-transfer network that makes the stylised image I^ of eq. 10, networks.StyleTransfer).

Classes and labels. The paper's C predicts one class per image with a softmax and cross-entropy, and
a generated image's pseudo-label is its most likely class. Here the classes are the product's label
names (the nine chest X-ray labels, No Finding among them): C is trained with cross-entropy against
the image's positive findings (an even share each; No Finding when it has none; see
`class_targets`), and a generated image's pseudo-label is the label vector with only its most likely
class set (a finding, or No Finding), with that class's probability as its confidence. Images whose
confidence is below the threshold t (`threshold`, 0.8 as §5.2.1 found best; its details section
trained with 0.75) train C only above it, and production drops them (spec.ImageSampling).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from factory.data.labels import CXR_LABELS
from factory.models.spec import GeneratorSpec, ImageSampling, UntrainedShape
from factory.models.xraygan.config import checked_config, z_dim
from factory.models.xraygan.networks import (Classifier, DCGANGenerator, DCGANTrunk, StyleTransfer, first_parameter,
                                             from_uint8, halvings, sample_images)
from factory.models.xraygan.scores import pseudo_labels

NET_NAMES = ("G", "D", "C", "T")
NO_FINDING = "No Finding"
LOSS_WEIGHTS = ("alpha", "beta", "gamma", "eta", "delta", "lambda", "tau", "xi")

# Architecture first, then the training settings the recipe reads (the paper's §5.4 values); the
# whole dict is stored in bundles.
DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 64,
    "channels": 1,
    "num_labels": len(CXR_LABELS),
    "z_dim": 100,
    "g_width": 32,
    "d_width": 32,
    "c_width": 16,
    "t_width": 8,
    "t_blocks": 2,
    # Loss weights of eq. 10 and 11: alpha (IS score, negative: the score is maximised), beta (MMD),
    # gamma (style transfer: style of I^ + content of I^), eta (style of I_g, eq. 9), delta (G's
    # adversarial loss), lambda (D's), tau (C's), xi (C's loss on pseudo-labelled generated images).
    "alpha": -0.25,
    "beta": 3.0,
    "gamma": 0.001,
    "eta": 0.015,
    "delta": 1.0,
    "lambda": 0.5,
    "tau": 1.0,
    "xi": 0.125,
    "threshold": 0.8,
    "mmd_bandwidth": 1.0,  # the paper's kernel exp(-|x - x'|^2)
    "content_layer": 1,  # C's stage whose maps the content loss compares (Johnson et al. use an early one)
    "lr": {"G": 5e-4, "D": 1e-3, "C": 5e-4, "T": 5e-4},  # T: the paper gives none; G's
    "betas": [0.5, 0.999],  # DCGAN's
    "weight_decay": 1e-3,  # Adam's L2 weight decay (§5.4)
}


def make_config(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """The full model config: defaults updated by `overrides` and keyword arguments, checked.

    Raises ValueError on an unknown key or an impossible value."""
    return checked_config("xraygan-ucgan", DEFAULT_CONFIG, overrides, kwargs,
                          ("channels", "num_labels", "z_dim", "g_width", "d_width", "c_width", "t_width", "t_blocks"),
                          NET_NAMES, _check_ucgan)


def _check_ucgan(config: Mapping[str, Any]) -> None:
    """UCGAN's own settings: the classifier, the loss weights and the content layer."""
    if config["num_labels"] < 2:
        raise ValueError("num_labels must be at least 2: the classifier picks the most likely of them")
    for key in (*LOSS_WEIGHTS, "mmd_bandwidth", "weight_decay"):
        if not isinstance(config[key], (int, float)) or isinstance(config[key], bool):
            raise ValueError(f"{key} must be a number, not {config[key]!r}")
    if config["mmd_bandwidth"] <= 0 or config["weight_decay"] < 0:
        raise ValueError("mmd_bandwidth must be positive and weight_decay not negative")
    if not isinstance(config["threshold"], (int, float)) or not 0.0 <= config["threshold"] <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], not {config['threshold']!r}")
    stages = halvings(config["image_size"]) + 1  # C's stages, at S, S/2, ..., 4 pixels
    if not isinstance(config["content_layer"], int) or not 0 <= config["content_layer"] < stages:
        raise ValueError(f"content_layer must be one of C's stages 0..{stages - 1}, not {config['content_layer']!r}")


class Generator(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.net = DCGANGenerator(config["z_dim"], config["image_size"], config["channels"], config["g_width"])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z_dim) noise -> (B, C, S, S) images in [-1, 1]."""
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.trunk = DCGANTrunk(config["image_size"], config["channels"], config["d_width"])
        self.head = nn.Linear(self.trunk.out_features, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> real/fake logits (B,)."""
        return self.head(self.trunk(images)).squeeze(1)


def build_networks(config: Mapping[str, Any]) -> dict[str, nn.Module]:
    config = make_config(config)
    return {"G": Generator(config), "D": Discriminator(config),
            "C": Classifier(config["image_size"], config["channels"], config["c_width"], config["num_labels"]),
            "T": StyleTransfer(config["channels"], config["t_width"], config["t_blocks"])}


def class_targets(labels: torch.Tensor, label_names: Sequence[str]) -> torch.Tensor:
    """C's cross-entropy targets (B, L) from 0/1 labels (B, L): an even share for each positive finding;
    a study with none is all No Finding. (CheXpert's No Finding may be 1 beside Support Devices: the
    finding wins.) Without a No Finding label, a study with no positive gets an all-zero row, which
    weighs nothing in the soft cross-entropy."""
    names = list(label_names)
    findings = torch.tensor([name != NO_FINDING for name in names], device=labels.device)
    positive = (labels == 1) & findings
    count = positive.sum(dim=1, keepdim=True)
    targets = positive.to(torch.float32) / count.clamp(min=1)
    if NO_FINDING in names:
        targets[:, names.index(NO_FINDING)] = (count[:, 0] == 0).to(torch.float32)
    return targets


def one_hot_labels(classes: torch.Tensor, num_labels: int) -> torch.Tensor:
    """A pseudo-label as a label vector: only the chosen class set (a finding, or No Finding)."""
    return torch.nn.functional.one_hot(classes, num_labels).to(torch.float32)


def generate(nets: Mapping[str, nn.Module], labels: torch.Tensor | None, z: torch.Tensor) -> np.ndarray:
    """Images (B, H, W) uint8 for noise (B, z_dim); `labels` must be None (the model is unconditional;
    its labels come from `pseudo_label`). Eval mode, so a sample depends on its noise alone."""
    if labels is not None:
        raise ValueError("xraygan-ucgan is unconditional: its images are labelled by pseudo_label")
    return sample_images(nets["G"], z)


def pseudo_label(nets: Mapping[str, nn.Module], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's pseudo-labels for 8-bit images (B, H, W): the label vectors (B, L) float32 with only the most
    likely class set, and that class's probability (B,) float32. Eval mode: per sample."""
    C = nets["C"]
    C.eval()
    first = first_parameter(C)
    with torch.inference_mode():
        probs = torch.softmax(C(from_uint8(images, first)).float(), dim=1)
    classes, confidence = pseudo_labels(probs)
    return one_hot_labels(classes, probs.shape[1]).cpu().numpy(), confidence.cpu().numpy().astype(np.float32)


def untrained_shape(size: int, seed: int, width: int | None = None) -> UntrainedShape:
    """An untrained UCGAN's classifier reads the chest X-ray labels."""
    overrides: dict[str, Any] = {"image_size": size, "num_labels": len(CXR_LABELS)}
    if width is not None:
        overrides.update(g_width=width, d_width=width, c_width=width, t_width=width)
    return UntrainedShape(overrides, list(CXR_LABELS))


SPEC = GeneratorSpec(
    name="xraygan-ucgan",
    summary="noise -> chest X-ray image, pseudo-labelled by its classifier (XRAY-GAN's score-guided DCGAN)",
    make_config=make_config,
    build_networks=build_networks,
    untrained=untrained_shape,
    untrained_options=("width",),
    recipe="factory.train.recipes.xraygan:UcganRecipe",
    products=(ImageSampling(z_dim=z_dim, generate=generate, pseudo_label=pseudo_label,
                            threshold=lambda cfg: cfg["threshold"]),),
)
