"""Explanations of chest X-rays by a bundle whose model makes them (factory.models.spec.Explanation;
the `justify` model): for each image its diagnosis with the probabilities of every diagnosis, a
caption that justifies it, the nearest alternative diagnosis and the X-ray of that alternative.

The library function under `medsynth explain` (a folder of files, or shards on the production pool);
it asks the bundle's spec, never a model by name. Images are 8-bit grayscale arrays of one square
size; each image's explanation is a function of the image, the bundle and its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

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


def explaining_bundle(url: str, option: str = "--bundle") -> dict[str, Any]:
    """A bundle's metadata with every file it lists verified, read before any network is built (and before
    Ray starts); refused, naming `option` and its bundle.json, when its model makes no explanations."""
    from factory import storage
    from factory.models.bundle_metadata import METADATA_NAME, read_metadata, verify_files

    metadata = read_metadata(url)
    model = registry.spec(metadata["recipe"])
    if model.product(Explanation) is None:
        makes = ", ".join(model.product_kinds) or "nothing to produce"
        raise BadInputError(f"{option} {storage.join(url, METADATA_NAME)}",
                            f"a {metadata['recipe']} bundle makes {makes}, not explanations (e.g. justify does)")
    verify_files(url, metadata)
    return metadata


def explainer(bundle: Bundle) -> Explanation:
    """The bundle's Explanation product (BadInputError naming what it makes instead)."""
    product = registry.spec(bundle.recipe).product(Explanation)
    if product is None:
        makes = ", ".join(registry.spec(bundle.recipe).product_kinds) or "nothing to produce"
        raise BadInputError("bundle", f"a {bundle.recipe} bundle makes {makes}, not explanations")
    return product


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index`'s explanation in a production run of seed `seed`: a function of the two
    alone, so every sample draws its own numbers (the search's restarts) whatever its batch."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def explain_images(bundle: Bundle, images: np.ndarray, seed: int | Sequence[int] = 0,
                   batch_size: int = 16) -> list[ImageExplanation]:
    """One explanation per 8-bit X-ray of `images` (N, H, W), in order. `seed`: one for all images (they
    go through the model `batch_size` at a time), or one per image (each image goes through alone, so its
    result is the same bits in any batch: what production needs)."""
    if not isinstance(seed, (int, np.integer)):
        seeds = [int(s) for s in seed]
        if len(seeds) != len(images):
            raise ValueError(f"{len(seeds)} seeds for {len(images)} images")
        return [found for image, own in zip(images, seeds)
                for found in explain_images(bundle, np.asarray(image)[None], int(own))]
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
