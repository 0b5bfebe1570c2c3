"""The unconditional toy image model's module (the registry maps one name to one module's SPEC); its
code lives beside the conditional one in tests/toy_image_generator.py."""

from toy_image_generator import PSEUDO_SPEC as SPEC

__all__ = ["SPEC"]
