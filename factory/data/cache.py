"""A Zarr cache of decoded, resized training tensors at any fsspec URL (local path, file://, s3://, memory://).

Decoding JPEGs/PNGs and resizing them costs more than training a small model on them, so a dataset
is decoded once into a Zarr group and re-read as arrays:

  URL/images      float32 (N, *image shape), one chunk per `chunk` studies
  URL/labels      float32 (N, len(label_names))
  URL/study_ids   strings (N,)
  URL/patient_ids strings (N,), each study's patient (`meta["patient_id"]`, else its study id)
  URL/reports     strings (N,), "" where the study has none
  URL/has_report  bool (N,), which tells an empty report from none
  attrs           label_names, count, skipped (source -> problem), complete

`complete` is set last, so a cache left half-written by a crash is refused rather than read short.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import zarr
from tqdm import tqdm

from factory import storage
from factory.data.dataset import Study, StudyDataset
from factory.errors import BadInputError


def _options(url: str, storage_options: storage.StorageOptions) -> dict[str, Any] | None:
    if storage.protocol_of(url) == "s3":
        return {**storage.s3_options_from_env(), **dict(storage_options or {})}
    return dict(storage_options) if storage_options else None


def _open_group(url: str, mode: str, storage_options: storage.StorageOptions) -> zarr.Group:
    options = _options(url, storage_options)
    if storage.protocol_of(url) == "file":
        return zarr.open_group(url.removeprefix("file://"), mode=mode)
    return zarr.open_group(url, mode=mode, storage_options=options)


def write_cache(dataset: StudyDataset, url: str, chunk: int = 64,
                storage_options: storage.StorageOptions = None, progress: bool = True) -> "CachedDataset":
    """Decode every study of `dataset` into a Zarr group at `url` (replacing what is there).

    Every image must have the same shape (open the dataset with a `size`). With the dataset's
    skip_bad, unreadable studies are left out and listed in attrs["skipped"]; otherwise the first
    one raises BadInputError.
    """
    group = _open_group(url, "w", storage_options)
    total = len(dataset)
    images = labels = None
    ids: list[str] = []
    patients: list[str] = []
    reports: list[str] = []
    has_report: list[bool] = []
    skipped = dict(dataset.skipped)
    buffer_images: list[np.ndarray] = []
    buffer_labels: list[np.ndarray] = []
    written = 0

    def flush() -> None:
        nonlocal written
        if buffer_images:
            images[written:written + len(buffer_images)] = np.stack(buffer_images)
            labels[written:written + len(buffer_labels)] = np.stack(buffer_labels)
            written += len(buffer_images)
            buffer_images.clear()
            buffer_labels.clear()

    for index in tqdm(range(total), desc=f"caching to {url}", unit="study", disable=not progress):
        try:
            study = dataset.load(index)  # not dataset[index]: skipping must not duplicate a neighbour
        except BadInputError as err:
            if not dataset.skip_bad:
                raise
            skipped[err.source] = err.problem
            continue
        image = study.image.detach().cpu().numpy().astype(np.float32, copy=False)
        if images is None:
            images = group.create_array("images", shape=(total, *image.shape), chunks=(chunk, *image.shape),
                                        dtype="float32")
            labels = group.create_array("labels", shape=(total, len(study.labels)),
                                        chunks=(max(chunk, 1024), len(study.labels)), dtype="float32")
        elif image.shape != images.shape[1:]:
            raise BadInputError(f"study {study.study_id}", f"image shape {image.shape} differs from "
                                f"{images.shape[1:]}; open the dataset with a fixed size (--size) to cache it")
        buffer_images.append(image)
        buffer_labels.append(study.labels.detach().cpu().numpy().astype(np.float32, copy=False))
        ids.append(study.study_id)
        patients.append(str(study.meta.get("patient_id", study.study_id)))
        reports.append(study.report or "")
        has_report.append(study.report is not None)
        if len(buffer_images) == chunk:
            flush()
    flush()
    if images is None:
        raise BadInputError(url, "no readable study to cache")
    images.resize((written, *images.shape[1:]))
    labels.resize((written, labels.shape[1]))
    for name, values in (("study_ids", ids), ("patient_ids", patients), ("reports", reports)):
        array = group.create_array(name, shape=(written,), chunks=(written,), dtype=str)
        array[:] = np.array(values, dtype=object)
    group.create_array("has_report", shape=(written,), chunks=(written,), dtype=bool)[:] = np.array(has_report)
    group.attrs.update({"label_names": list(dataset.label_names), "count": written, "skipped": skipped,
                        "complete": True})
    return CachedDataset(url, storage_options)


class CachedDataset(StudyDataset):
    """The studies of a cache written by `write_cache`, as a StudyDataset."""

    def __init__(self, url: str, storage_options: storage.StorageOptions = None):
        super().__init__(skip_bad=False)
        self.url = url
        try:
            self.group = _open_group(url, "r", storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
            raise BadInputError(url, "no Zarr cache here") from err
        attrs = self.group.attrs.asdict()
        if not attrs.get("complete"):
            raise BadInputError(url, "incomplete cache (the writer did not finish); rebuild it")
        self.label_names = tuple(attrs["label_names"])
        self.skipped = dict(attrs["skipped"])
        self.images = self.group["images"]
        self.labels = self.group["labels"]
        self.study_ids = self.group["study_ids"][:]
        # Caches written before patients were recorded: each study its own patient.
        self.patient_ids = self.group["patient_ids"][:] if "patient_ids" in self.group else self.study_ids
        self.reports = self.group["reports"][:]
        self.has_report = self.group["has_report"][:]
        self._block: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _image(self, index: int) -> np.ndarray:
        # Sequential readers touch each chunk once instead of once per study.
        chunk = self.images.chunks[0]
        start = (index // chunk) * chunk
        if self._block is None or self._block[0] != start:
            self._block = (start, self.images[start:start + chunk])
        return self._block[1][index - start]

    def load(self, index: int) -> Study:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return Study(study_id=str(self.study_ids[index]), image=torch.from_numpy(np.array(self._image(index))),
                     labels=torch.from_numpy(np.asarray(self.labels[index], dtype=np.float32)),
                     report=str(self.reports[index]) if self.has_report[index] else None,
                     meta={"cache": self.url})

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images and labels at once (for small datasets that fit in memory)."""
        return self.images[:], self.labels[:]
