"""A producer of phantom image/report pairs: the simulator's studies as factory samples.

It gives downstream teams labelled stand-in data with the same shard format as generated data, and
lets the demo and the tests exercise production without a trained bundle.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from factory.data.labels import CXR_LABELS
from factory.produce.samples import Sample

RECIPE = "phantom-cxr"


def primary_label(labels: np.ndarray) -> int:
    """The first positive finding in CXR_LABELS order, or No Finding (0)."""
    positives = [i for i, value in enumerate(labels) if value == 1 and CXR_LABELS[i] != "No Finding"]
    return positives[0] if positives else CXR_LABELS.index("No Finding")


def phantom_pairs(seed: int, indices: Iterable[int], size: int = 128) -> Iterator[Sample]:
    from factory.data.phantoms.cxr import generate_study

    for index in indices:
        study = generate_study(seed, index, size=size)
        label = primary_label(study.labels)
        yield Sample(
            index=index,
            images={"png": study.image},
            report=study.report,
            label=label,
            metadata={
                "kind": "pair",
                "source": {"kind": "phantom", "recipe": RECIPE},
                "labels": {name: float(v) for name, v in zip(CXR_LABELS, study.labels)},
                "primary_label": CXR_LABELS[label],
            },
        )
