"""Producers: what an actor builds once and then asks for batches of samples by index.

A producer is described by a small JSON-able spec, so the driver can hand it to actors and the
manifest can echo it; `build_producer` turns the spec into the object inside the actor (loading a
bundle there, once). Sample n must depend only on (run seed, n) and the spec: that is what makes
any shard regenerable bit for bit, by any actor, in any order.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np

from factory.data.labels import CXR_LABELS
from factory.errors import FactoryError
from factory.produce.samples import Dropped, Sample


class Producer(Protocol):
    sample_kind: str

    def make_batch(self, indices: range) -> Sequence[Sample | Dropped]:
        """Samples for consecutive indices, in order."""


def primary_label(labels: np.ndarray) -> int:
    """The first positive finding in CXR_LABELS order, or No Finding (0)."""
    positives = [i for i, value in enumerate(labels) if value == 1 and CXR_LABELS[i] != "No Finding"]
    return positives[0] if positives else CXR_LABELS.index("No Finding")


def phantom_pairs(seed: int, indices: Iterable[int], size: int = 128) -> Iterator[Sample]:
    """Phantom studies as samples: labelled stand-in data in the same shard format as generated
    data, and production without a trained bundle (demo, tests, capacity work)."""
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
                "source": {"kind": "phantom", "recipe": "phantom-cxr"},
                "labels": {name: float(v) for name, v in zip(CXR_LABELS, study.labels)},
                "primary_label": CXR_LABELS[label],
            },
        )


class PhantomPairProducer:
    """Phantom chest X-ray studies with their reports, as image/report pairs."""

    sample_kind = "pair"

    def __init__(self, seed: int, size: int = 128):
        self.seed = seed
        self.size = size

    def make_batch(self, indices: range) -> list[Sample]:
        return list(phantom_pairs(self.seed, indices, self.size))


def build_producer(spec: dict[str, Any], seed: int) -> Producer:
    kind = spec.get("type")
    if kind == "phantom-cxr":
        return PhantomPairProducer(seed, size=int(spec.get("size", 128)))
    raise FactoryError(f"unknown producer type {kind!r} (known: phantom-cxr)")
