"""Training recipes by name: each builds its networks, names their optimiser settings and runs one
training step through engines (factory.train.engines), knowing nothing of Ray or storage."""

from __future__ import annotations

import importlib

# name -> "module:class"
RECIPES: dict[str, str] = {
    "emixer": "factory.train.recipes.emixer:EmixerRecipe",
}


def get_recipe(name: str):
    """A fresh recipe object for `name`."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    module_name, class_name = RECIPES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()
