"""Explanations of chest X-rays by a bundle whose model makes them (factory.models.spec.Explanation;
the `justify` model): for each image its diagnosis with the probabilities of every diagnosis, a
caption that justifies it, the nearest alternative diagnosis and the X-ray of that alternative.

The library function under a future `medsynth explain`; it asks the bundle's spec, never a model by
name. Images are 8-bit grayscale arrays of one square size; each image's explanation is a function
of the image, the bundle and the seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from factory.errors import BadInputError
from factory.models import registry
from factory.models.bundle import Bundle
from factory.models.spec import Explanation


@dataclass
class ImageExplanation:
    diagnosis: str
    probabilities: dict[str, float]  # label name -> p(d | image), in label order
    caption: str
    alternative: str  # the nearest alternative diagnosis
    reached: bool  # whether the counterfactual's representation decodes to the alternative
    counterfactual: np.ndarray  # (S, S) uint8

    def to_json(self) -> dict[str, Any]:
        """Everything but the image, JSON-able."""
        return {"diagnosis": self.diagnosis, "probabilities": self.probabilities, "caption": self.caption,
                "alternative": self.alternative, "alternative_reached": self.reached}


def explainer(bundle: Bundle) -> Explanation:
    """The bundle's Explanation product (BadInputError naming what it makes instead)."""
    product = registry.spec(bundle.recipe).product(Explanation)
    if product is None:
        makes = ", ".join(registry.spec(bundle.recipe).product_kinds) or "nothing to produce"
        raise BadInputError("bundle", f"a {bundle.recipe} bundle makes {makes}, not explanations")
    return product


def explain_images(bundle: Bundle, images: np.ndarray, seed: int = 0, batch_size: int = 16) -> list[ImageExplanation]:
    """One explanation per 8-bit X-ray of `images` (N, H, W), in order."""
    product = explainer(bundle)
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1] != images.shape[2] or not len(images):
        raise BadInputError("images", f"need square 8-bit grayscale images (N, H, W), not {images.dtype} "
                                      f"{tuple(images.shape)}")
    names = list(bundle.label_names)
    out: list[ImageExplanation] = []
    for start in range(0, len(images), batch_size):
        found = product.explain(bundle.nets, images[start:start + batch_size], bundle.model_config, seed)
        captions = product.decode_captions(found.caption_ids, bundle.vocabulary)
        for i, caption in enumerate(captions):
            p = found.probabilities[i]
            out.append(ImageExplanation(
                diagnosis=names[int(p.argmax())], probabilities={n: float(v) for n, v in zip(names, p)},
                caption=caption, alternative=names[int(found.alternative[i])], reached=bool(found.reached[i]),
                counterfactual=found.counterfactual[i]))
    return out
