"""A real (or phantom) StudyDataset as a stream of the same sample dicts a run yields, so that
`mix(real, synthetic, ratio)` and downstream code see one format.

Split like a run: each (rank, worker) takes every (world x workers)-th study of a seeded per-epoch
permutation that all ranks share, so every study is seen exactly once per epoch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from webdataset.pytorch import IterableDataset

from factory.stream.format import LabelFilter, label_vector
from factory.stream.topology import Topology, derive_seed, resolve_topology, worker_info

if TYPE_CHECKING:  # a StudyDataset holds torch tensors; the base install (no torch) never builds one
    from factory.data.dataset import Study, StudyDataset


def primary_label(labels: dict[str, float], label_names: Sequence[str]) -> int:
    """The first positive finding in label order, else No Finding, else -1: the rule producers use
    for the `cls` member (factory.produce.producers.primary_label)."""
    for i, name in enumerate(label_names):
        if name != "No Finding" and labels.get(name) == 1:
            return i
    return list(label_names).index("No Finding") if "No Finding" in label_names else -1


class StudySamples(IterableDataset):  # torch's where torch is installed, as webdataset's pipelines
    def __init__(self, dataset: StudyDataset, *, shuffle: bool = False, seed: int = 0,
                 labels: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                 label_names: Sequence[str] | None = None, topology: Topology | None = None, name: str = "real"):
        super().__init__()
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.label_filter = LabelFilter(labels, exclude)
        self.label_names = tuple(label_names if label_names is not None else dataset.label_names)
        self.topology = topology or resolve_topology()
        self.name = name

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def indices(self) -> np.ndarray:
        """The study indices this (rank, worker) reads this epoch."""
        order = np.arange(len(self.dataset))
        if self.shuffle:
            order = np.random.default_rng(derive_seed(self.seed, self.epoch)).permutation(order)
        worker, workers = worker_info()
        part, parts = self.topology.rank * workers + worker, self.topology.world_size * workers
        return order[part::parts]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in self.indices():
            sample = study_sample(self.dataset[int(index)], self.dataset.label_names, self.label_names, self.name)
            if self.label_filter(sample):
                yield sample


def study_sample(study: Study, dataset_labels: Sequence[str], label_names: Sequence[str],
                 url: str = "real") -> dict[str, Any]:
    values = {name: float(v) for name, v in zip(dataset_labels, study.labels.tolist()) if v == v}  # NaN: unmentioned
    image = study.image.float()
    return {
        "__key__": study.study_id,
        "__url__": url,
        "image": image,
        "images": {"png": image},
        "report": study.report,
        "labels": label_vector(values, label_names),
        "label": primary_label(values, label_names),
        "meta": {"kind": "real", "study_id": study.study_id, "labels": values, **study.meta},
    }


def study_samples(dataset: StudyDataset, *, shuffle: bool = False, seed: int = 0, labels: Sequence[str] | None = None,
                  exclude: Sequence[str] | None = None, label_names: Sequence[str] | None = None,
                  rank: int | None = None, world_size: int | None = None) -> StudySamples:
    """Wrap a StudyDataset (images already float tensors, as its adapters load them) as a sample stream."""
    return StudySamples(dataset, shuffle=shuffle, seed=seed, labels=labels, exclude=exclude, label_names=label_names,
                        topology=resolve_topology(rank, world_size))
