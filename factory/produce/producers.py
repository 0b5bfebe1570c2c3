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


def primary_label(labels: np.ndarray, names: Sequence[str] = CXR_LABELS) -> int:
    """The first positive finding in label order, or No Finding."""
    positives = [i for i, value in enumerate(labels) if value == 1 and names[i] != "No Finding"]
    return positives[0] if positives else list(names).index("No Finding")


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


class LabelPolicy:
    """Which labels sample n is conditioned on, as a function of (seed, n) alone.

    balanced: a primary finding drawn uniformly over the label names (No Finding included);
    prior: a label combination drawn from the training data's combination frequencies;
    counts: explicit counts per combination ("Cardiomegaly+Pleural Effusion": 250, ...), summing to the
    run's count, laid out in a seeded permutation so that every shard gets a fair mix.
    """

    def __init__(self, label_names: Sequence[str], policy: str | dict[str, int], seed: int, count: int,
                 prior: Sequence[dict[str, Any]] | None = None):
        self.names = list(label_names)
        self.seed = seed
        self.policy = policy if isinstance(policy, str) else "counts"
        if self.policy == "prior":
            if not prior:
                raise FactoryError("this bundle records no training label prior; use balanced or explicit counts")
            self.combos = [self._vector(entry["labels"]) for entry in prior]
            shares = np.array([entry["share"] for entry in prior], dtype=np.float64)
            self.cumulative = np.cumsum(shares / shares.sum())
        elif self.policy == "counts":
            if sum(policy.values()) != count:
                raise FactoryError(f"label counts add up to {sum(policy.values())}, not the run's count {count}")
            order = sorted(policy)
            self.combos = [self._vector(combo.split("+")) for combo in order]
            layout = np.repeat(np.arange(len(order)), [policy[c] for c in order])
            self.layout = np.random.default_rng([seed, 0x1ABE1]).permutation(layout)
        elif self.policy != "balanced":
            raise FactoryError(f"unknown label policy {policy!r}: balanced, prior or counts per combination")

    def _vector(self, names: Sequence[str]) -> np.ndarray:
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise FactoryError(f"unknown labels {unknown}; this bundle knows {self.names}")
        return np.array([1.0 if n in names else 0.0 for n in self.names], dtype=np.float32)

    def labels(self, index: int, rng: np.random.Generator) -> np.ndarray:
        if self.policy == "balanced":
            vector = np.zeros(len(self.names), dtype=np.float32)
            vector[rng.integers(len(self.names))] = 1.0
            return vector
        if self.policy == "prior":
            return self.combos[int(np.searchsorted(self.cumulative, rng.random(), side="right"))]
        return self.combos[self.layout[index]]


class BundlePairProducer:
    """Image/report pairs from a label-conditioned generator bundle (EMIXER and kin).

    Sample n: labels from the label policy and noise z from a generator seeded by (seed, n); greedy
    report decoding. The bundle loads once, onto the GPU when the actor has one.
    """

    sample_kind = "pair"

    def __init__(self, seed: int, bundle_url: str, labels: str | dict[str, int], count: int):
        import torch

        from factory.models import registry
        from factory.models.bundle import load_bundle

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.bundle = load_bundle(bundle_url, device=self.device)
        self.model = registry.model_module(self.bundle.recipe)
        self.seed = seed
        self.z_dim = self.model.z_dim(self.bundle.model_config)
        self.policy = LabelPolicy(self.bundle.label_names, labels, seed, count,
                                  self.bundle.metadata["training_data"].get("label_prior"))
        self.source = {"kind": "bundle", "recipe": self.bundle.recipe, "bundle_id": self.bundle.bundle_id,
                       "bundle_sha256": self.bundle.sha256}

    def make_batch(self, indices: range) -> list[Sample]:
        labels, noise = [], []
        for index in indices:
            rng = np.random.default_rng([self.seed, index])
            labels.append(self.policy.labels(index, rng))
            noise.append(rng.standard_normal(self.z_dim, dtype=np.float32))
        labels_t = self.torch.from_numpy(np.stack(labels))
        images, ids = self.model.generate(self.bundle.nets, labels_t, self.torch.from_numpy(np.stack(noise)))
        reports = self.model.decode_reports(ids, self.bundle.vocabulary)
        samples = []
        for index, vector, image, report in zip(indices, labels, images, reports):
            label = primary_label(vector, self.bundle.label_names)
            samples.append(Sample(
                index=index, images={"png": image}, report=report, label=label,
                metadata={"kind": "pair", "source": self.source,
                          "labels": {name: float(v) for name, v in zip(self.bundle.label_names, vector)},
                          "primary_label": self.bundle.label_names[label]},
            ))
        return samples


def build_producer(spec: dict[str, Any], seed: int) -> Producer:
    kind = spec.get("type")
    if kind == "phantom-cxr":
        return PhantomPairProducer(seed, size=int(spec.get("size", 128)))
    if kind == "bundle-pairs":
        return BundlePairProducer(seed, spec["bundle"], spec.get("labels", "balanced"), int(spec["count"]))
    raise FactoryError(f"unknown producer type {kind!r} (known: phantom-cxr, bundle-pairs)")
