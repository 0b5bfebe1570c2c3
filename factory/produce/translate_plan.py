"""The slice plan of a translation run: which source slice is sample n.

A source dataset is in the volumes layout (factory.data.adapters.volumes: ROOT/labels.csv plus one
NIfTI file, DICOM series, Zarr array or PNG folder per study). The run translates the studies of
the chosen source modality (or, without one, of every modality the bundle translates), and lays
their 2-D axial slices out in one fixed order:

    studies sorted by study_id (byte order of the UTF-8 text, whatever the order of labels.csv);
    within a study, its axial slices inferior to superior, as the adapter reads them (NIfTI
    reoriented to RAS, a DICOM series sorted along its slice normal, Zarr and PNG as stored);
    a 2-D study (one slice) counts once.

Sample n is the n-th slice in that order, so shard i holds slices [i*S, (i+1)*S) exactly as in
production. The plan is built on the driver from file headers only (a NIfTI header, a DICOM or PNG
file count, a Zarr array's metadata), so planning a large dataset decodes no image; an actor checks
every study it loads against the plan and stops, naming the file, when the two disagree.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from factory import storage
from factory.data.adapters.volumes import detect_format, read_labels
from factory.errors import BadInputError, FactoryError
from factory.produce.shards import canonical_sha256

log = logging.getLogger(__name__)

LABELS_NAME = "labels.csv"
HEADER_THREADS = 8  # header reads are I/O bound (object storage round trips), not CPU bound
NIFTI_HEADER_BYTES = 544  # a NIfTI-2 header (540) plus its extension flag; NIfTI-1 needs 348
# A study that becomes a Zarr array must have a name Zarr and every object store accept as one path part.
ARRAY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass(frozen=True)
class PlannedStudy:
    study_id: str
    path: str  # relative to the dataset root, as in labels.csv
    modality: str
    age: float | None  # years; None where labels.csv leaves it empty
    slices: int
    first_index: int  # the sample index of its first slice

    @property
    def is_volume(self) -> bool:
        return self.slices > 1


class SlicePlan:
    """The plan as a JSON-able document (what the driver hands the actors) and a lookup over it."""

    def __init__(self, document: dict[str, Any]):
        self.document = document
        self.root: str = document["root"]
        self.studies: list[PlannedStudy] = []
        first = 0
        for study_id, path, modality, age, slices in document["studies"]:
            self.studies.append(PlannedStudy(study_id, path, modality, age, int(slices), first))
            first += int(slices)
        self.count = first
        self._starts = [s.first_index for s in self.studies]

    @property
    def sha256(self) -> str:
        return canonical_sha256(self.document)

    @property
    def modalities(self) -> list[str]:
        return sorted({s.modality for s in self.studies})

    def locate(self, index: int) -> tuple[PlannedStudy, int]:
        """(study, slice within it) of sample `index`."""
        if not 0 <= index < self.count:
            raise IndexError(f"sample {index} is outside the plan's {self.count} slices")
        study = self.studies[bisect.bisect_right(self._starts, index) - 1]
        return study, index - study.first_index

    def volumes(self) -> list[PlannedStudy]:
        return [s for s in self.studies if s.is_volume]


def labels_sha256(root: str, storage_options=None) -> str:
    return hashlib.sha256(storage.read_bytes(storage.join(root, LABELS_NAME), storage_options)).hexdigest()


def _nifti_slices(url: str, storage_options) -> int:
    import nibabel as nib

    try:
        with storage.open_file(url, "rb", storage_options) as raw:
            stream = gzip.GzipFile(fileobj=raw) if url.endswith(".gz") else raw
            data = stream.read(NIFTI_HEADER_BYTES)
        nifti2 = int.from_bytes(data[:4], "little") in (540, 0x1C020000)  # either byte order
        header = (nib.Nifti2Header if nifti2 else nib.Nifti1Header).from_fileobj(io.BytesIO(data))
        shape = tuple(int(n) for n in header.get_data_shape())
        axes = nib.orientations.io_orientation(header.get_best_affine())
    except BadInputError:
        raise
    except Exception as err:  # gzip, nibabel and the store each raise their own types for a damaged file
        raise BadInputError(url, f"unreadable NIfTI header ({type(err).__name__}: {err})") from err
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise BadInputError(url, f"expected a 3-D NIfTI (or 2-D with one slice), got shape {shape}")
    # The adapter reorients to RAS and reads slices along S: the voxel axis closest to world z.
    superior = [axis for axis in range(3) if axes[axis][0] == 2]
    if not superior:
        raise BadInputError(url, "its affine has no axis along the patient's inferior-superior direction")
    return shape[superior[0]]


def _zarr_slices(url: str, storage_options) -> int:
    import zarr

    try:
        options = storage_options or (storage.s3_options_from_env() if storage.protocol_of(url) == "s3" else None)
        shape = zarr.open_array(url, mode="r", **({"storage_options": options} if "://" in url else {})).shape
    except Exception as err:  # zarr raises its own and the store's errors
        raise BadInputError(url, f"unreadable Zarr array ({type(err).__name__}: {err})") from err
    if len(shape) not in (2, 3):
        raise BadInputError(url, f"expected a Zarr array (rows, columns) or (slices, rows, columns), got {shape}")
    return 1 if len(shape) == 2 else int(shape[0])


def _file_slices(url: str, storage_options, suffix: str | None) -> int:
    names = [n for n in storage.list_names(url, storage_options) if suffix is None or n.lower().endswith(suffix)]
    if not names:
        raise BadInputError(url, "not found, or holds no slices")
    return len(names)


def count_slices(root: str, path: str, storage_options=None) -> int:
    """Axial slices of one study, from its header or file count (no pixel data is decoded)."""
    fmt = detect_format(root, path, storage_options)
    url = storage.join(root, path)
    if fmt == "nifti":
        if not storage.exists(url, storage_options):
            raise BadInputError(url, "not found")
        return _nifti_slices(url, storage_options)
    if fmt == "zarr":
        return _zarr_slices(url, storage_options)
    # One file per slice: the adapter reads every file of a DICOM series folder, and the PNGs of a PNG folder.
    return _file_slices(url, storage_options, ".png" if fmt == "png" else None)


def _age(value: str) -> float | None:
    age = float(value or "nan")
    return None if np.isnan(age) else age


def build_plan(root: str, translatable: Sequence[str], modality: str | None = None, storage_options=None,
               progress: bool = True) -> SlicePlan:
    """The slice plan of `root` for a bundle that translates `translatable` modalities.

    With `modality`, only its studies; without, the studies of every translatable modality (others,
    CT among them, are left out and logged). Raises BadInputError naming labels.csv or the study's
    file when the dataset cannot be planned."""
    from tqdm import tqdm

    root = storage.absolute(root)
    labels_url = storage.join(root, LABELS_NAME)
    if not storage.exists(labels_url, storage_options):
        raise BadInputError(labels_url, "not found: the source must be a dataset in the volumes layout "
                                        "(labels.csv with study_id, age, modality, path)")
    if modality is not None and modality not in translatable:
        raise FactoryError(f"this bundle translates {list(translatable)} into CT, not {modality!r}")
    wanted = [modality] if modality else list(translatable)
    rows = read_labels(root, storage_options)
    selected = [row for row in rows if row["modality"] in wanted]
    left_out = len(rows) - len(selected)
    if left_out:
        log.info("%s: %d studies of other modalities are not translated", labels_url, left_out)
    if not selected:
        raise BadInputError(labels_url, f"no studies of modality {' or '.join(wanted)} to translate")
    seen: set[str] = set()
    for row in selected:
        if row["study_id"] in seen:
            raise BadInputError(labels_url, f"study_id {row['study_id']!r} appears more than once")
        seen.add(row["study_id"])
    selected.sort(key=lambda row: row["study_id"].encode("utf-8"))
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        try:
            counts = list(tqdm(pool.map(lambda row: count_slices(root, row["path"], storage_options), selected),
                               total=len(selected), desc="plan source slices", unit="study", disable=not progress))
        except BaseException:
            pool.shutdown(cancel_futures=True)  # report the first bad study without reading the rest
            raise
    studies = []
    for row, slices in zip(selected, counts):
        if slices > 1 and not ARRAY_NAME.match(row["study_id"]):
            raise BadInputError(labels_url, f"study_id {row['study_id']!r} of a volume cannot name its Zarr array: "
                                            "use letters, digits, '.', '_' and '-' (not first)")
        studies.append([row["study_id"], row["path"], row["modality"], _age(row["age"]), slices])
    return SlicePlan({"root": root, "labels_sha256": labels_sha256(root, storage_options),
                      "modality": modality, "studies": studies})
