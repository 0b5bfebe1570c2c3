"""Brain phantom: head CT, MRI or PET, as 2-D axial slices or 3-D volumes, labelled with physiological age.

Patient n of modality m depends only on (seed, m, n): the anatomy stream is seeded by [seed, m, n, 0]
and the scanner (contrast jitter, noise) by [seed, m, n, 1]. Patients are therefore drawn independently
per modality: CT patient 7 and MRI patient 7 are different people, so the data are unpaired, as in
DUIIT (docs/models.md).

Image axes: (rows, columns) for a slice, (slices, rows, columns) for a volume. Row 0 is anterior,
column 0 is the patient's right (radiological convention), slice 0 is the most inferior.
Values: CT int16 Hounsfield units; MRI uint16 scanner units (white matter ~950); PET float32 SUV.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from factory import storage
from factory.data.phantoms.brain_anatomy import Head, sample_head, tissue_fractions
from factory.data.phantoms.brain_modalities import FIELD_OF_VIEW, MODALITIES, render

SIZE_RANGE = (32, 512)
SLICE_LEVELS = (-5.0, 40.0)  # mm above the head centre: from the third ventricle to the centrum semiovale
VOLUME_Z = (-40.0, 100.0)  # mm covered by a 3-D volume, skull base region to vertex
LABEL_FIELDS = ("study_id", "age", "modality", "path", "spacing")
FORMATS = ("nifti", "dicom", "zarr", "png")
_CHECKPOINT_EVERY = 256  # studies between rewrites of labels.csv, so a killed run keeps most of its list


@dataclass
class BrainPhantom:
    study_id: str
    modality: str
    age: float  # physiological age, years
    image: np.ndarray  # see the module docstring for axes and values
    spacing: tuple[float, ...]  # mm per image axis, same order as image.shape
    z0: float  # mm: height of the first slice above the field of view's centre
    seed: int
    index: int


def study_id(seed: int, index: int, modality: str) -> str:
    return f"brain-{modality}-{seed}-{index:08d}"


def sampling_grid(modality: str, dims: int, size: int, level: float):
    """World coordinates (x, y, z) in mm of every voxel centre, the spacing per image axis, and z0."""
    pixel = FIELD_OF_VIEW[modality] / size
    centres = (np.arange(size, dtype=np.float32) - (size - 1) / 2) * pixel
    # Columns run from the patient's right to left (+x), rows from anterior (+y) to posterior.
    x, y = centres[None, :], -centres[:, None]
    if dims == 2:
        z = np.full((1, 1), level, np.float32)
        return (x, y, z), (pixel, pixel), level
    depth = size // 2
    dz = (VOLUME_Z[1] - VOLUME_Z[0]) / depth
    zs = (VOLUME_Z[0] + (np.arange(depth, dtype=np.float32) + 0.5) * dz)[:, None, None]
    return (x[None], y[None], zs), (dz, pixel, pixel), float(zs[0, 0, 0])


def anatomy(seed: int, index: int, modality: str, dims: int = 2, size: int = 128, age: float | None = None):
    """Patient `index` of `modality` before imaging: (head, tissue fractions, world coords, spacing, z0)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
        raise ValueError(f"size must lie in [{SIZE_RANGE[0]}, {SIZE_RANGE[1]}], got {size}")
    rng = np.random.default_rng([seed, MODALITIES.index(modality), index, 0])
    head: Head = sample_head(rng, age)
    level = float(rng.uniform(*SLICE_LEVELS))
    (x, y, z), spacing, z0 = sampling_grid(modality, dims, size, level)
    shape = (size, size) if dims == 2 else (len(z), size, size)
    coords = tuple(np.broadcast_to(c, shape) for c in (x, y, z))
    return head, tissue_fractions(head, *coords, voxel=spacing[-1]), coords, spacing, z0


def generate(seed: int, index: int, modality: str, dims: int = 2, size: int = 128,
             age: float | None = None) -> BrainPhantom:
    """Patient `index` of `modality`; `age` (years) overrides the drawn age, for figures."""
    head, fractions, coords, spacing, z0 = anatomy(seed, index, modality, dims, size, age)
    scanner = np.random.default_rng([seed, MODALITIES.index(modality), index, 1])
    image = render(modality, head, fractions, spacing, coords, scanner)
    return BrainPhantom(study_id=study_id(seed, index, modality), modality=modality, age=round(head.age, 2),
                        image=image, spacing=tuple(float(s) for s in spacing), z0=z0, seed=seed, index=index)


def _labels_csv(rows: dict[str, dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LABEL_FIELDS, lineterminator="\n")
    writer.writeheader()
    for key in sorted(rows):
        writer.writerow(rows[key])
    return text.getvalue().encode()


def read_label_rows(out: str) -> dict[str, dict]:
    """Rows of an existing labels.csv under `out` by study id (empty when there is none)."""
    url = storage.join(out, "labels.csv")
    if not storage.exists(url):
        return {}
    rows = csv.DictReader(io.StringIO(storage.read_bytes(url).decode()))
    return {row["study_id"]: row for row in rows}


def write_dataset(out: str, count: int, modality: str, fmt: str = "nifti", dims: int = 2, size: int = 128,
                  seed: int = 0) -> None:
    """Write `count` phantom patients under `out` (a folder or fsspec URL) plus `labels.csv`.

    Every file is written under a temporary name and moved into place (or uploaded whole), and
    labels.csv lists only complete studies: it is rewritten every few hundred studies and when the
    loop ends, also on error, so a failed run keeps what it finished. Rows of an existing labels.csv
    for other studies are kept.
    """
    from factory.data.phantoms.brain_formats import WRITERS

    if fmt not in WRITERS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    rows = read_label_rows(out)
    labels_url = storage.join(out, "labels.csv")
    try:
        for index in tqdm(range(count), desc=f"brain {modality} phantoms ({fmt}, {dims}-D)", unit="study"):
            phantom = generate(seed, index, modality, dims, size)
            path = WRITERS[fmt](out, phantom)
            rows[phantom.study_id] = {"study_id": phantom.study_id, "age": f"{phantom.age:.2f}",
                                      "modality": modality, "path": path,
                                      "spacing": " ".join(f"{s:.6g}" for s in phantom.spacing)}
            if (index + 1) % _CHECKPOINT_EVERY == 0:
                storage.atomic_put(labels_url, _labels_csv(rows))
    finally:
        storage.atomic_put(labels_url, _labels_csv(rows))
