"""Model name -> its module, whose `SPEC` (factory.models.spec.GeneratorSpec) declares everything
else. A bundle stores only the name and a JSON config; the spec rebuilds its networks. Model
modules (and torch) are imported on first use, so the CLI can list the names without loading them.

Adding a model: its own files (model module with SPEC, recipe, tests) and one line here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from torch import nn

    from factory.models.spec import GeneratorSpec

GENERATORS: dict[str, str] = {
    "emixer": "factory.models.emixer",
    "duiit": "factory.models.duiit",
    "judge": "factory.models.judge",
    "justify": "factory.models.justify.model",
    "xraygan-cgan": "factory.models.xraygan.cgan",
    "xraygan-ucgan": "factory.models.xraygan.ucgan",
    "medrat": "factory.models.medrat",
}


def names() -> list[str]:
    return sorted(GENERATORS)


def spec(name: str) -> GeneratorSpec:
    """The model's spec (KeyError naming the known models when there is none)."""
    if name not in GENERATORS:
        raise KeyError(f"unknown model {name!r}; known: {names()}")
    declared = importlib.import_module(GENERATORS[name]).SPEC
    if declared.name != name:
        raise RuntimeError(f"{GENERATORS[name]} declares {declared.name!r}, registered as {name!r}")
    return declared


def make_config(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model's full config from its defaults and `overrides` (ValueError when invalid)."""
    return spec(name).make_config(overrides)


def build_networks(name: str, config: Mapping[str, Any], seed: int | None = None) -> dict[str, nn.Module]:
    """The model's networks. With `seed`, initial weights are a function of the seed alone: the
    layers' initialisers draw from torch's global generator, which is seeded for the call and
    restored afterwards, so the caller's random state is left untouched; and they are built on one
    torch thread, so the thread count does not round them differently (it did, on AVX-512 CPUs)."""
    from factory.seeding import global_rng_seeded, one_torch_thread

    build = spec(name).build_networks
    if seed is None:
        return build(config)
    with global_rng_seeded(seed), one_torch_thread():
        return build(config)
