"""A small label-conditioned pair generator that exists only through the generator seam: its own
file (networks, spec, recipe) plus one registry line, which tests/test_generator_seam.py adds. What
works for it without a change anywhere else is what the seam promises a new model.

G maps (labels, z) to an image through one linear layer; its "report" names the positive findings
(words from the vocabulary, one sentence). The recipe fits G's images to real ones by mean squared
error: enough to show a training step through engines, not a model anyone should use.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from factory.data.labels import CXR_LABELS
from factory.data.text.vocab import Vocabulary
from factory.models.registry import build_networks as registry_build_networks
from factory.models.spec import GeneratorSpec, PairSampling, UntrainedShape

NAME = "toy"
DEFAULT_CONFIG: dict[str, Any] = {"image_size": 16, "num_labels": len(CXR_LABELS), "z_dim": 4, "lr": 1e-2}
WORDS = [name.lower().replace(" ", "-") for name in CXR_LABELS]


def make_config(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    config = {**DEFAULT_CONFIG, **dict(overrides or {}), **kwargs}
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown toy config keys: {unknown}")
    if not isinstance(config["image_size"], int) or config["image_size"] < 4:
        raise ValueError(f"image_size must be an integer >= 4, not {config['image_size']!r}")
    return config


class ToyGenerator(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.size = config["image_size"]
        self.linear = nn.Linear(config["num_labels"] + config["z_dim"], self.size * self.size)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(torch.cat([labels, z], dim=1))).view(-1, 1, self.size, self.size)


def build_networks(config: Mapping[str, Any]) -> dict[str, nn.Module]:
    return {"G": ToyGenerator(make_config(config))}


def z_dim(config: Mapping[str, Any]) -> int:
    return config["z_dim"]


def generate(nets: Mapping[str, nn.Module], labels: torch.Tensor, z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        images = nets["G"].eval()(z, labels)
    pixels = ((images[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    # One sentence per sample: the ids of its positive findings' words (4 = the first word after the
    # special tokens, in WORDS order), then <eos>.
    ids = np.zeros((len(labels), 1, len(WORDS) + 1), dtype=np.int64)
    for row, vector in enumerate(labels.numpy()):
        words = [4 + i for i, on in enumerate(vector) if on == 1] + [Vocabulary.eos_id]
        ids[row, 0, : len(words)] = words
    return pixels, ids


def decode_reports(ids: np.ndarray, vocabulary: Vocabulary) -> list[str]:
    return [vocabulary.decode_sentences(report) for report in ids]


def untrained_shape(size: int, seed: int) -> UntrainedShape:
    return UntrainedShape({"image_size": size}, list(CXR_LABELS), Vocabulary(WORDS).to_json(), "; toy model")


class ToyRecipe:
    """The Recipe protocol (factory.train.recipes.Recipe) for the toy: one part, one network."""

    name = NAME

    def __init__(self) -> None:
        self.config: dict[str, Any] = make_config()

    def data_parts(self, overrides: Mapping[str, Any]) -> tuple[str, ...]:
        return ("studies",)

    def data_info(self, parts, data) -> dict[str, Any]:
        return {}

    def model_config(self, overrides: Mapping[str, Any], data) -> dict[str, Any]:
        return make_config(overrides, image_size=int(data.parts["studies"].images.shape[-1]))

    def build(self, model_config: Mapping[str, Any], seed: int | None = None) -> dict[str, nn.Module]:
        self.config = make_config(model_config)
        return registry_build_networks(NAME, self.config, seed)

    def optimizer_config(self, name: str) -> dict[str, Any]:
        return {"lr": self.config["lr"]}

    def learning_rates(self, step: int, total_steps: int) -> dict[str, float]:
        return {"G": self.config["lr"]}

    def batch(self, data, indices: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        part, index = data.parts["studies"], indices["studies"]
        return {"image": part.images[index] * 2 - 1, "labels": torch.nan_to_num(part.labels[index]).eq(1).float()}

    def train_step(self, engines, batch: Mapping[str, torch.Tensor], step: int,
                   generator: torch.Generator) -> dict[str, float]:
        z = torch.randn(len(batch["labels"]), self.config["z_dim"], generator=generator)
        loss = F.mse_loss(engines["G"](z, batch["labels"]), batch["image"])
        engines["G"].backward(loss)
        engines["G"].step()
        return {"mse": float(loss.detach())}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        return None

    def export_metadata(self, data) -> dict[str, Any]:
        return {"label_names": list(CXR_LABELS), "vocabulary": Vocabulary(WORDS).to_json()}


SPEC = GeneratorSpec(
    name=NAME,
    summary="toy label-conditioned pair generator (tests only)",
    make_config=make_config,
    build_networks=build_networks,
    untrained=untrained_shape,
    recipe="toy_generator:ToyRecipe",
    products=(PairSampling(z_dim=z_dim, generate=generate, decode_reports=decode_reports),),
)
