"""One modality's 2-D axial slices from a volume dataset: the view a 2-D translator trains on.

The volume adapter (factory.data.adapters.volumes) yields whole studies of every modality in its
labels.csv: 2-D slices as (1, H, W), 3-D volumes as (1, D, H, W). `AxialSlices` keeps one modality
and gives (1, H, W) slices labelled with the study's age:
- a 2-D study is one slice;
- a 3-D volume gives `slices_per_volume` axial slices evenly spaced over the central band of its depth
  (CENTRAL_BAND; one slice: the middle one), where a head volume shows ventricles and cortex rather
  than the skull base or the vertex.

With one slice per study the view is indexed without reading any image. With more, each study is
read once while indexing to learn its depth (a 2-D study still counts once), so caching such a view
decodes every study twice; the Zarr training cache is built once per run, so that cost is paid once.
"""

from __future__ import annotations

import numpy as np

from factory.data.adapters.volumes import VolumeDataset
from factory.data.dataset import Study, StudyDataset
from factory.errors import BadInputError

CENTRAL_BAND = (0.35, 0.65)  # fractions of a volume's depth, inferior to superior


def slice_positions(depth: int, count: int) -> list[int]:
    """Distinct slice indices of a `depth`-slice volume: `count` evenly spaced over the central band."""
    if depth <= 1:
        return [0]
    if count == 1:
        return [(depth - 1) // 2]
    low, high = (fraction * (depth - 1) for fraction in CENTRAL_BAND)
    return sorted({int(round(z)) for z in np.linspace(low, high, count)})


class AxialSlices(StudyDataset):
    label_names = ("age",)

    def __init__(self, volumes: VolumeDataset, modality: str, slices_per_volume: int = 1):
        super().__init__(skip_bad=volumes.skip_bad)
        if slices_per_volume < 1:
            raise ValueError(f"slices_per_volume must be >= 1, not {slices_per_volume}")
        self.volumes, self.modality = volumes, modality
        self.skipped = volumes.skipped  # one record of unreadable studies, whichever view met them
        rows = [i for i, row in enumerate(volumes.rows) if row["modality"] == modality]
        self._last: tuple[int, Study] | None = None
        if slices_per_volume == 1:
            self.index: list[tuple[int, int | None]] = [(row, None) for row in rows]
        else:
            self.index = [(row, z) for row in rows for z in self._positions(row, slices_per_volume)]

    def _positions(self, row: int, count: int) -> list[int | None]:
        try:
            image = self._study(row).image
        except BadInputError as err:
            if not self.skip_bad:
                raise
            self.skipped[err.source] = err.problem
            return []
        return [None] if image.ndim == 3 else list(slice_positions(image.shape[1], count))

    def _study(self, row: int) -> Study:
        # Consecutive slices of one volume decode it once.
        if self._last is None or self._last[0] != row:
            self._last = (row, self.volumes.load(row))
        return self._last[1]

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index: int) -> Study:
        if not 0 <= index < len(self.index):
            raise IndexError(index)
        row, z = self.index[index]
        study = self._study(row)
        image = study.image
        meta = dict(study.meta)
        if image.ndim == 4:  # (1, D, H, W)
            z = slice_positions(image.shape[1], 1)[0] if z is None else z
            image = image[:, z]
            meta["spacing"] = tuple(meta["spacing"][-2:])
            meta["slice"] = z
            study_id = f"{study.study_id}#z{z:03d}"
        else:
            study_id = study.study_id
        return Study(study_id=study_id, image=image.contiguous(), labels=study.labels, meta=meta)
