"""A run's training data: the parts its recipe asks for, cached once under the run, loaded by workers.

Driver side (`prepare_data`): each part the recipe names (`recipe.data_parts`) is decoded once into
a Zarr cache at RUN/data/PART.zarr (factory.data.cache), and the recipe derives what it needs from
the whole data once (`recipe.data_info`, e.g. EMIXER's vocabulary), kept as RUN/data_info.json. Both
are reused by every worker and every restart. Worker side (`load_training_data`): the caches as
in-memory tensors, a `TrainingData` the recipe reads its batches from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from factory import storage
from factory.config import TrainConfig

INFO_NAME = "data_info.json"


@dataclass
class DataPart:
    """One cached part in memory: images as the adapters give them (float32, (N, C, H, W))."""

    images: torch.Tensor
    labels: torch.Tensor  # float32 (N, len(label_names)); NaN where unknown
    label_names: tuple[str, ...]
    study_ids: list[str]
    reports: list[str]  # "" where a study has none
    has_report: np.ndarray

    def __len__(self) -> int:
        return len(self.study_ids)


@dataclass
class TrainingData:
    parts: dict[str, DataPart]
    info: dict[str, Any] = field(default_factory=dict)  # the recipe's data_info


def cache_url(run_url: str, part: str) -> str:
    return storage.join(run_url, "data", f"{part}.zarr")


def prepare_data(config: TrainConfig, recipe, progress: bool = True) -> dict[str, Any]:
    """Cache every part the recipe needs (unless cached) and its data info; returns what workers load:
    {"caches": {part: url}, "info": {...}}."""
    from factory.data.cache import CachedDataset, write_cache
    from factory.data.training import check_parts, open_part
    from factory.errors import BadInputError

    try:
        parts = tuple(recipe.data_parts(config.model))
    except ValueError as err:
        raise BadInputError("model", str(err)) from err
    run_url = storage.join(config.storage_path, config.name)
    caches: dict[str, CachedDataset] = {}
    for part in parts:
        url = cache_url(run_url, part)
        try:
            caches[part] = CachedDataset(url)
        except BadInputError:
            check_parts(config.data, parts, recipe.name)
            with open_part(config.data, part) as dataset:
                caches[part] = write_cache(dataset, url, progress=progress)
    info_url = storage.join(run_url, INFO_NAME)
    if storage.exists(info_url):
        info = json.loads(storage.read_bytes(info_url))
    else:
        info = recipe.data_info(caches, config.data)
        storage.atomic_put(info_url, json.dumps(info).encode())
    return {"caches": {part: cache.url for part, cache in caches.items()}, "info": info}


def load_training_data(prepared: Mapping[str, Any]) -> TrainingData:
    """The prepared caches as tensors (every part fits in a worker's memory at training sizes)."""
    from factory.data.cache import CachedDataset

    parts = {}
    for name, url in prepared["caches"].items():
        cache = CachedDataset(url)
        images, labels = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in cache.arrays())
        parts[name] = DataPart(images=images, labels=labels, label_names=tuple(cache.label_names),
                               study_ids=[str(s) for s in cache.study_ids], reports=[str(r) for r in cache.reports],
                               has_report=np.asarray(cache.has_report, dtype=bool))
    return TrainingData(parts=parts, info=dict(prepared["info"]))


def fingerprint(data: TrainingData) -> str:
    """sha256 of every part's study ids and labels, parts in the recipe's order."""
    digest = hashlib.sha256()
    for part in data.parts.values():
        for study_id in part.study_ids:
            digest.update(study_id.encode() + b"\0")
        digest.update(np.ascontiguousarray(part.labels.numpy()).tobytes())
    return digest.hexdigest()
