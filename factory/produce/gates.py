"""Quality gates: score each generated sample and drop those on the wrong side of a threshold,
before anything is encoded or written. The manifest counts what was dropped, and why.

A gate is described by a JSON-able spec, built once per actor:

    {"scorer": "factory.produce.gates:image_contrast", "min": 0.05, "reason": "flat-image"}
    {"scorer": "package.module:function", "max": 12.5, "reason": "near-copy", "quality_key": "nearest_training_distance"}

The scorer is any importable callable `(samples) -> sequence of floats`, so a judge classifier's
confidence or a nearest-training-neighbour distance plugs in the same way. A kept sample's score is
recorded in its metadata under `quality.<quality_key>` when one is given.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from factory.errors import FactoryError
from factory.produce.samples import Dropped, Sample

Scorer = Callable[[Sequence[Sample]], Sequence[float]]


def image_contrast(samples: Sequence[Sample]) -> list[float]:
    """Standard deviation of each sample's main image, scaled to [0, 1]: near 0 for the flat or
    saturated images of a collapsed generator."""
    scores = []
    for sample in samples:
        image = next(iter(sample.images.values()))
        if isinstance(image, (bytes, bytearray)):
            raise FactoryError("image_contrast needs decoded images, not PNG bytes")
        scores.append(float(image.std() / np.iinfo(image.dtype).max))
    return scores


@dataclass(frozen=True)
class QualityGate:
    scorer: Scorer
    reason: str
    minimum: float | None = None
    maximum: float | None = None
    quality_key: str | None = None

    def apply(self, batch: Sequence[Sample | Dropped]) -> list[Sample | Dropped]:
        live = [s for s in batch if isinstance(s, Sample)]
        scores = iter(self.scorer(live) if live else [])
        result: list[Sample | Dropped] = []
        for item in batch:
            if isinstance(item, Dropped):
                result.append(item)
                continue
            score = float(next(scores))
            if (self.minimum is not None and score < self.minimum) or (self.maximum is not None and score > self.maximum):
                result.append(Dropped(item.index, self.reason))
                continue
            if self.quality_key:
                item.metadata.setdefault("quality", {})[self.quality_key] = score
            result.append(item)
        return result


def build_gate(spec: dict[str, Any]) -> QualityGate:
    try:
        module_name, function_name = spec["scorer"].split(":")
        scorer = getattr(importlib.import_module(module_name), function_name)
    except (KeyError, ValueError, ImportError, AttributeError) as err:
        raise FactoryError(f"quality gate {spec!r}: scorer must name an importable 'module:function' ({err})") from err
    if spec.get("min") is None and spec.get("max") is None:
        raise FactoryError(f"quality gate {spec!r}: give min, max or both")
    return QualityGate(scorer=scorer, reason=str(spec.get("reason") or function_name), minimum=spec.get("min"),
                       maximum=spec.get("max"), quality_key=spec.get("quality_key"))
