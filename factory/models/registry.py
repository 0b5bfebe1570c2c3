"""Model name -> network builder, so a bundle (which stores only the name and a JSON config) can
rebuild its networks. Model modules (and torch) are imported on first use, so the CLI can list
the names without loading them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from torch import nn

# name -> module exposing make_config(overrides) and build_networks(config)
MODELS: dict[str, str] = {
    "emixer": "factory.models.emixer",
    "judge": "factory.models.judge",
    "duiit": "factory.models.duiit",
}


def model_module(name: str):
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return importlib.import_module(MODELS[name])


def make_config(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model's full config from its defaults and `overrides` (ValueError when invalid)."""
    return model_module(name).make_config(overrides)


def build_networks(name: str, config: Mapping[str, Any], seed: int | None = None) -> dict[str, nn.Module]:
    """The model's networks. With `seed`, initial weights are a function of the seed alone: the
    layers' initialisers draw from torch's global generator, which is seeded for the call and
    restored afterwards, so the caller's random state is left untouched."""
    from factory.seeding import global_rng_seeded

    module = model_module(name)
    if seed is None:
        return module.build_networks(config)
    with global_rng_seeded(seed):
        return module.build_networks(config)
