"""`medsynth export-nifti RUN OUT`: a translation run's whole volumes as NIfTI files, one per volume.

    OUT/{study_id}.nii.gz   NIfTI-1, int16 Hounsfield units, the volume of `RUN/volumes.zarr/{study_id}`
    OUT/labels.csv          study_id, age, modality (ct), path, spacing (rows of other studies already
                            there are kept): OUT is itself a dataset in the volumes layout (factory.data.adapters.volumes), so `--real OUT
                            --real-layout volumes`, training configs and the adapter read it as they
                            read a real one

Orientation: the Zarr arrays are (slices, rows, columns) with slices inferior to superior, rows
anterior to posterior and columns from the patient's right to left (the volume adapter's display
axes). The NIfTI array is (columns, rows, slices) with the affine diag(-dx, -dy, dz) in RAS+
millimetres, the convention the brain phantom's own NIfTI files use; the adapter, which reorients to
RAS, reads back exactly the Zarr voxels and spacing. The scanner position is not kept by a
translation, so the affine puts the volume's centre at the origin (sform and qform code 2,
"aligned"). An axis whose spacing the source did not give is written as 1 mm and named in a warning.

Files are written atomically (gzip without a timestamp, so an export is byte-reproducible). A file
already there with other bytes is an error: an export never overwrites what it did not write.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import logging
from typing import Any, Sequence

import numpy as np

from factory import storage
from factory.errors import BadInputError, FactoryError

log = logging.getLogger(__name__)

LABEL_FIELDS = ("study_id", "age", "modality", "path", "spacing")
UNKNOWN_SPACING_MM = 1.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_URL", help="a finished translation run (folder or s3:// URL)")
    parser.add_argument("out", metavar="OUT", help="folder or URL for the .nii.gz files and their labels.csv")
    parser.add_argument("--study", action="append", metavar="ID", help="export only this volume (repeatable)")


def run(args: argparse.Namespace) -> int:
    written = export_nifti(args.run, args.out, studies=args.study)
    print(f"{len(written)} volumes as NIfTI in {args.out} (with labels.csv)")
    return 0


def nifti_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS+ affine of the (column, row, slice) array of a (slices, rows, columns) volume with
    `spacing` (dz, dy, dx) in mm, centred on the origin: columns run to the patient's left (-x), rows
    posterior (-y), slices superior (+z)."""
    slices, rows, columns = shape
    dz, dy, dx = spacing
    affine = np.diag([-dx, -dy, dz, 1.0])
    affine[:3, 3] = [(columns - 1) / 2 * dx, (rows - 1) / 2 * dy, -(slices - 1) / 2 * dz]
    return affine


def nifti_bytes(volume: np.ndarray, spacing: Sequence[float], description: str = "") -> bytes:
    """A (slices, rows, columns) int16 HU volume as .nii.gz bytes (see the module docstring)."""
    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(volume.astype(np.int16).transpose(2, 1, 0)),
                            nifti_affine(volume.shape, spacing))
    image.set_sform(image.affine, code=2)
    image.set_qform(image.affine, code=2)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = description.encode()[:79]
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def _spacing(url: str, attributes: dict[str, Any]) -> tuple[float, float, float]:
    given = list(attributes.get("spacing") or [None, None, None])
    if len(given) != 3:
        raise FactoryError(f"{url}: spacing {given} does not give one value per axis of a volume")
    missing = [axis for axis, value in zip(("slice", "row", "column"), given) if value is None]
    if missing:
        log.warning("%s: no %s spacing in the source; written as %g mm", url, " or ".join(missing), UNKNOWN_SPACING_MM)
    return tuple(float(UNKNOWN_SPACING_MM if value is None else value) for value in given)  # type: ignore[return-value]


def _put_new(url: str, data: bytes) -> None:
    """Write `data` at `url` unless the same bytes are there; other bytes there are an error."""
    if storage.exists(url):
        if storage.read_bytes(url) == data:
            return
        raise BadInputError(url, "exists with other content; choose another output folder (an export never "
                                 "overwrites a file it did not write)")
    storage.atomic_put(url, data)


def export_nifti(run_url: str, out: str, studies: Sequence[str] | None = None,
                 progress: bool = True) -> list[str]:
    """Write the volumes of a translation run (all, or `studies`) as NIfTI under `out`, plus labels.csv;
    return the files' URLs. The voxels are checked against the manifest's sha256 before writing."""
    from tqdm import tqdm

    from factory.produce.volumes import open_array, voxel_sha256
    from factory.run_manifest import read_manifest

    manifest = read_manifest(run_url)
    volumes = (manifest.get("extra") or {}).get("volumes")
    if manifest["sample_kind"] != "translation" or not volumes:
        raise BadInputError(run_url, f"holds no volumes to export (a {manifest['sample_kind']} run; only "
                                     "translation runs of 3-D sources have volumes)")
    arrays = {array["name"]: array for array in volumes["arrays"]}
    chosen = list(studies) if studies else list(arrays)
    unknown = [name for name in chosen if name not in arrays]
    if unknown:
        raise BadInputError(run_url, f"no volume {unknown[0]!r} in this run; it has {sorted(arrays)[:5]}"
                                     + (" …" if len(arrays) > 5 else ""))
    rows, written = [], []
    for name in tqdm(chosen, desc="export NIfTI", unit="volume", disable=not progress):
        url = storage.join(run_url, volumes["group"], name)
        array = open_array(url)
        volume = np.asarray(array[...])
        if voxel_sha256(volume) != arrays[name]["sha256"]:
            raise FactoryError(f"{url}: its voxels do not match the manifest's sha256 (run `medsynth inspect`)")
        attributes = dict(array.attrs)
        spacing = _spacing(url, attributes)
        age = attributes.get("age")
        path = f"{name}.nii.gz"
        description = f"translated CT ({attributes.get('source_modality')}), run {manifest['run_id']}"
        target = storage.join(out, path)
        _put_new(target, nifti_bytes(volume, spacing, description))
        written.append(target)
        rows.append({"study_id": name, "age": "" if age is None else f"{float(age):g}", "modality": "ct",
                     "path": path, "spacing": " ".join(f"{s:g}" for s in spacing)})
    _write_labels(out, rows)
    return written


def _write_labels(out: str, rows: list[dict[str, str]]) -> None:
    """labels.csv of `rows`, keeping the rows of an existing labels.csv for other studies (an earlier
    export of other volumes into the same folder); a different row for the same study is an error."""
    from factory.data.adapters.volumes import read_labels

    url = storage.join(out, "labels.csv")
    merged = {row["study_id"]: {k: row.get(k) or "" for k in LABEL_FIELDS}
              for row in (read_labels(out) if storage.exists(url) else [])}
    for row in rows:
        if merged.get(row["study_id"], row) != row:
            raise BadInputError(url, f"already lists study {row['study_id']!r} differently; choose another "
                                     "output folder")
        merged[row["study_id"]] = row
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LABEL_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(merged[key] for key in sorted(merged))
    storage.atomic_put(url, text.getvalue().encode())
