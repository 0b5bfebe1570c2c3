"""Training recipes: each declares the training data it needs, builds its networks, names their
optimiser settings and learning-rate schedule and runs one training step through engines
(factory.train.engines), knowing nothing of Ray or storage. `Recipe` is the protocol the runner uses; a model's spec (factory.models.spec) names its recipe class."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from factory.config import TrainDataConfig
    from factory.data.cache import CachedDataset
    from factory.train.data import TrainingData
    from factory.train.engines import Engine

class Recipe(Protocol):
    """What the runner asks of a recipe, in the order it asks.

    Driver, once per run: `data_parts` (the named parts of the training data it reads; see
    factory.data.training) and `data_info` (anything derived from the whole data, JSON, e.g. a
    vocabulary). Every worker: `model_config`, `build`, an engine per network with
    `optimizer_config`; then per step `learning_rates` (set on the engines before the step), `batch`
    (from each part's sampled indices) and `train_step`. `state_dict`/`load_state_dict`: the recipe's
    own per-worker state (tensors), saved with every checkpoint. `export_metadata`: what a bundle
    stores beside the weights and the model config. Optional: `progress_metrics`, the names (or name
    suffixes, e.g. `cycle` for `mri_cycle`) of the metrics the training progress bar shows; without it
    the bar shows the first four (factory.train.progress); `check_steps(overrides, steps)`, called by
    the driver before anything starts, raises ValueError when the run's length does not fit the
    model config (e.g. a schedule of stages)."""

    name: str

    def data_parts(self, overrides: Mapping[str, Any]) -> tuple[str, ...]: ...

    def data_info(self, parts: Mapping[str, CachedDataset], data: TrainDataConfig) -> dict[str, Any]: ...

    def model_config(self, overrides: Mapping[str, Any], data: TrainingData) -> dict[str, Any]: ...

    def build(self, model_config: Mapping[str, Any], seed: int | None = None) -> dict[str, nn.Module]: ...

    def optimizer_config(self, name: str) -> dict[str, Any]: ...

    def learning_rates(self, step: int, total_steps: int) -> dict[str, float]: ...

    def batch(self, data: TrainingData, indices: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]: ...

    def train_step(self, engines: Mapping[str, Engine], batch: Mapping[str, torch.Tensor], step: int,
                   generator: torch.Generator) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...

    def export_metadata(self, data: TrainingData) -> dict[str, Any]:
        """{"label_names": [...], "vocabulary": JSON or None, "training_data": {extra fields}}."""


def trainable() -> list[str]:
    """The models that have a training recipe."""
    from factory.models import registry

    return [name for name in registry.names() if registry.spec(name).recipe]


def get_recipe(name: str) -> Recipe:
    """A fresh recipe object for model `name` (KeyError naming the trainable models when it has none)."""
    from factory.models import registry

    recipe = registry.spec(name).recipe if name in registry.GENERATORS else None
    if recipe is None:
        raise KeyError(f"no training recipe for {name!r}; trainable: {trainable()}")
    module_name, class_name = recipe.split(":")
    return getattr(importlib.import_module(module_name), class_name)()
