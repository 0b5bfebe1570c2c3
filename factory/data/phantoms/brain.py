"""Brain phantom: head CT, MRI or PET, as 2-D axial slices or 3-D volumes, labelled with physiological age.

Patient n of modality m depends only on (seed, m, n): the anatomy stream is seeded by [seed, m, n, 0]
and the scanner (contrast jitter, noise) by [seed, m, n, 1]. Patients are therefore drawn independently
per modality: CT patient 7 and MRI patient 7 are different people, so the data are unpaired, as in
DUIIT (docs/models.md). Where a paired reference is wanted (evaluating a translation), `paired_ct`
renders the CT of an MRI or PET patient: the same head on the same grid.

Image axes: (rows, columns) for a slice, (slices, rows, columns) for a volume. Row 0 is anterior,
column 0 is the patient's right (radiological convention), slice 0 is the most inferior.
Values: CT int16 Hounsfield units; MRI uint16 scanner units (white matter ~950); PET float32 SUV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from factory.data.phantoms.brain_anatomy import Head, sample_head, tissue_fractions
from factory.data.phantoms.brain_modalities import FIELD_OF_VIEW, MODALITIES, render

SIZE_RANGE = (32, 512)
SLICE_LEVELS = (-5.0, 40.0)  # mm above the head centre: from the third ventricle to the centrum semiovale
VOLUME_Z = (-40.0, 100.0)  # mm covered by a 3-D volume, skull base region to vertex


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


def paired_ct(seed: int, index: int, modality: str, dims: int = 2, size: int = 128) -> BrainPhantom:
    """The CT of patient `index` of `modality`: the same head and age, on that modality's grid (field of
    view, slice level, slices), rendered with CT's contrast and noise. The reference a translation of
    the MRI or PET phantom should reach; its scanner draws from [seed, modality, index, 2], a stream no
    phantom of `generate` uses."""
    head, fractions, coords, spacing, z0 = anatomy(seed, index, modality, dims, size)
    scanner = np.random.default_rng([seed, MODALITIES.index(modality), index, 2])
    image = render("ct", head, fractions, spacing, coords, scanner)
    return BrainPhantom(study_id=f"{study_id(seed, index, modality)}-ct", modality="ct", age=round(head.age, 2),
                        image=image, spacing=tuple(float(s) for s in spacing), z0=z0, seed=seed, index=index)
