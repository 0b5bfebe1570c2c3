"""A training data config opened as named parts, one `StudyDataset` each.

A part is the slice of the training data a recipe asks for by name. EMIXER reads one part,
"studies" (chest X-rays with labels and reports); DUIIT reads "ct" and its source modalities
("mri", "pet"), each a set of unpaired 2-D axial slices labelled with age; MedRAT reads "images" and
"reports", the two sides of an unpaired split by patient (factory.data.unpaired). What each source gives:

  phantom-cxr                    studies, images, reports (generated on demand)
  phantom-brain                  ct, mri, pet: `counts[modality]` phantom patients, one slice each
  dataset, a chest X-ray layout  studies, images; reports from a layout with reports or `data.reports`
  dataset, layout volumes        one part per modality listed in its labels.csv (axial slices)

Brain phantoms go through the same path as a user's data: they are written as NIfTI (the volume
layout) into a temporary folder and read back through the volume adapter, so training never sees a
phantom-only shortcut. Patient n of each modality is a different person (the phantom seeds each
modality's patients apart), so CT and source parts are unpaired, as in DUIIT.
"""

from __future__ import annotations

import contextlib
import tempfile
from typing import Iterator

from factory.config import TrainDataConfig
from factory.data import unpaired
from factory.data.dataset import StudyDataset
from factory.errors import BadInputError

BRAIN_MODALITIES = ("ct", "mri", "pet")
STUDIES = "studies"
IMAGES, REPORTS = unpaired.IMAGES, unpaired.REPORTS


def available_parts(data: TrainDataConfig) -> tuple[str, ...]:
    """The part names `data` can give."""
    if data.source == "phantom-brain":
        return tuple(m for m in BRAIN_MODALITIES if data.counts.get(m))
    if data.layout == "volumes":
        from factory.data.adapters.volumes import read_labels

        present = {row["modality"] for row in read_labels(data.path)}
        return tuple(m for m in BRAIN_MODALITIES if m in present)
    return (STUDIES, IMAGES, *((REPORTS,) if unpaired.has_reports(data) else ()))


def check_parts(data: TrainDataConfig, needed: tuple[str, ...], recipe: str) -> None:
    """BadInputError unless `data` gives every part in `needed`."""
    available = available_parts(data)
    missing = [part for part in needed if part not in available]
    if missing:
        where = data.path if data.source == "dataset" else f"source {data.source}"
        hint = "; give data.reports, a source of reports" if missing == [REPORTS] else ""
        raise BadInputError(where or "training data", f"recipe {recipe} needs training data parts "
                            f"{list(needed)}; this data gives {list(available)} (missing {missing}){hint}")


@contextlib.contextmanager
def open_part(data: TrainDataConfig, part: str) -> Iterator[StudyDataset]:
    """The dataset of one part, valid inside the block (phantom files are removed after it)."""
    if part not in available_parts(data):
        raise BadInputError("training data", f"no part {part!r}; {data.source} gives {list(available_parts(data))}")
    if part in unpaired.SIDES:
        yield unpaired.open_side(data, part)
    elif data.source == "phantom-cxr":
        from factory.data.phantoms.dataset import PhantomCxrDataset

        yield PhantomCxrDataset(data.count, size=data.size, seed=data.seed)
    elif data.source == "phantom-brain":
        from factory.data.phantoms.brain_formats import write_dataset

        with tempfile.TemporaryDirectory(prefix=f"phantom-brain-{part}-") as folder:
            write_dataset(folder, data.counts[part], part, fmt="nifti", dims=2, size=data.size, seed=data.seed)
            yield _slices(folder, part, data, slices_per_volume=1)
    elif data.layout == "volumes":
        yield _slices(data.path, part, data, data.slices_per_volume)
    else:
        from factory.data.adapters import open_dataset

        yield open_dataset(data.path, data.layout, size=data.size, skip_bad=data.skip_bad)


def _slices(root: str, modality: str, data: TrainDataConfig, slices_per_volume: int) -> StudyDataset:
    from factory.data.adapters.volumes import open_volumes
    from factory.data.brain_slices import AxialSlices

    volumes = open_volumes(root, size=data.size, skip_bad=data.skip_bad)
    return AxialSlices(volumes, modality, slices_per_volume=slices_per_volume)
