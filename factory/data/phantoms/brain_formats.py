"""Writers of brain phantoms in the file formats real volumes come in: NIfTI, DICOM series, Zarr, PNG;
and `write_dataset`, a whole phantom dataset in one of them with its labels.csv.

Each writer returns the study's path relative to the dataset root (the `path` column of labels.csv).
Stored values: CT as Hounsfield units (NIfTI and Zarr int16; DICOM and PNG uint16 = HU + 1024, DICOM
with RescaleIntercept -1024), MRI as uint16 scanner units, PET as float32 SUV (DICOM: uint16 with a
per-slice RescaleSlope; PNG: SUV x 1000). Every file appears under its final name only when complete.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import uuid

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, MRImageStorage,
                         PositronEmissionTomographyImageStorage, generate_uid)
from tqdm import tqdm

from factory import storage
from factory.data.hounsfield import CT_PNG_OFFSET
from factory.data.phantoms.brain import BrainPhantom, generate

PET_PNG_SCALE = 1000.0  # PNG PET pixels hold SUV x 1000
LABEL_FIELDS = ("study_id", "age", "modality", "path", "spacing")
_CHECKPOINT_EVERY = 256  # studies between rewrites of labels.csv, so a killed run keeps most of its list
_SOP_CLASS = {"ct": CTImageStorage, "mri": MRImageStorage, "pet": PositronEmissionTomographyImageStorage}
_DICOM_MODALITY = {"ct": "CT", "mri": "MR", "pet": "PT"}


def _volume(phantom: BrainPhantom) -> np.ndarray:
    """The image as (slices, rows, columns)."""
    return phantom.image[None] if phantom.image.ndim == 2 else phantom.image


def _slice_spacing(phantom: BrainPhantom) -> float:
    return phantom.spacing[0] if phantom.image.ndim == 3 else 5.0  # a lone slice: a typical axial thickness


def nifti_affine(phantom: BrainPhantom) -> np.ndarray:
    """RAS affine of the (column, row, slice) array: +x to the patient's right means columns run -x."""
    rows, columns = phantom.image.shape[-2:]
    dy, dx = phantom.spacing[-2:]
    dz = _slice_spacing(phantom)
    affine = np.diag([-dx, -dy, dz, 1.0])
    # Column 0 is the patient's right (+x in RAS), row 0 anterior (+y).
    affine[:3, 3] = [(columns - 1) / 2 * dx, (rows - 1) / 2 * dy, phantom.z0]
    return affine


def write_nifti(root: str, phantom: BrainPhantom) -> str:
    data = _volume(phantom).transpose(2, 1, 0)  # NIfTI arrays are (i, j, k) = (column, row, slice)
    image = nib.Nifti1Image(np.ascontiguousarray(data), nifti_affine(phantom))
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = f"{phantom.modality} phantom age {phantom.age:.2f}".encode()
    name = f"{phantom.study_id}.nii.gz"
    storage.atomic_put(storage.join(root, name), gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))
    return name


def _uid(phantom: BrainPhantom, *parts) -> str:
    """Deterministic DICOM UID from the study's seed, modality and index."""
    return generate_uid(entropy_srcs=["medsynth-brain", str(phantom.seed), phantom.modality, str(phantom.index),
                                      *map(str, parts)])


def dicom_slices(phantom: BrainPhantom) -> list[bytes]:
    """One DICOM file per slice, inferior first, all of one series."""
    volume = _volume(phantom)
    dy, dx = phantom.spacing[-2:]
    dz = _slice_spacing(phantom)
    rows, columns = volume.shape[1:]
    # DICOM patient frame (LPS): +x to the patient's left, +y posterior; column 0 is the patient's right.
    x0, y0 = -(columns - 1) / 2 * dx, -(rows - 1) / 2 * dy
    study_uid, series_uid, frame_uid = _uid(phantom, "study"), _uid(phantom, "series"), _uid(phantom, "frame")
    files = []
    for k, plane in enumerate(volume):
        sop_uid = _uid(phantom, "slice", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _SOP_CLASS[phantom.modality]
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = _DICOM_MODALITY[phantom.modality]
        ds.PatientID = ds.PatientName = phantom.study_id
        ds.PatientAge = f"{int(phantom.age):03d}Y"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyDescription = "MedSynth brain phantom"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), round(phantom.z0 + k * dz, 4)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [round(dy, 6), round(dx, 6)]
        ds.SliceThickness = round(dz, 6)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if phantom.modality == "ct":
            pixels = (plane.astype(np.int32) + CT_PNG_OFFSET).astype(np.uint16)
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -CT_PNG_OFFSET, 1, "HU"
        elif phantom.modality == "pet":
            slope = max(float(plane.max()), 1e-3) / 65000.0
            pixels = np.rint(np.clip(plane, 0, None) / slope).astype(np.uint16)
            ds.RescaleIntercept, ds.RescaleSlope, ds.Units = 0, f"{slope:.8g}", "GML"
        else:
            pixels = plane.astype(np.uint16)
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def write_dicom(root: str, phantom: BrainPhantom) -> str:
    for k, data in enumerate(dicom_slices(phantom)):
        storage.atomic_put(storage.join(root, phantom.study_id, f"{k:04d}.dcm"), data)
    return phantom.study_id


def png_pixels(phantom: BrainPhantom) -> np.ndarray:
    if phantom.modality == "ct":
        return (_volume(phantom).astype(np.int32) + CT_PNG_OFFSET).astype(np.uint16)
    if phantom.modality == "pet":
        return np.rint(np.clip(_volume(phantom) * PET_PNG_SCALE, 0, 65535)).astype(np.uint16)
    return _volume(phantom).astype(np.uint16)


def write_png(root: str, phantom: BrainPhantom) -> str:
    for k, plane in enumerate(png_pixels(phantom)):
        buffer = io.BytesIO()
        Image.fromarray(plane).save(buffer, format="PNG", compress_level=1)
        storage.atomic_put(storage.join(root, phantom.study_id, f"{k:04d}.png"), buffer.getvalue())
    return phantom.study_id


def write_zarr(root: str, phantom: BrainPhantom) -> str:
    """One Zarr v3 array per study. Locally it is built under a temporary name and renamed into place;
    on an object store its objects are uploaded one by one and labels.csv, written after, commits it."""
    import zarr

    name = f"{phantom.study_id}.zarr"
    url = storage.join(root, name)
    fs, path = storage.filesystem(url)
    local = not storage.is_object_store(fs)
    target = os.path.join(os.path.dirname(path), f".{name}.{uuid.uuid4().hex}.partial") if local else url
    if local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    image = phantom.image
    chunks = image.shape if image.ndim == 2 else (min(16, image.shape[0]), *image.shape[1:])
    store = target if local else zarr.storage.FsspecStore.from_url(url, storage_options=storage.s3_options_from_env()
                                                                   if storage.protocol_of(url) == "s3" else None)
    try:
        array = zarr.create_array(store, shape=image.shape, dtype=image.dtype, chunks=chunks, overwrite=True,
                                  attributes={"modality": phantom.modality, "age": phantom.age,
                                              "spacing": list(phantom.spacing), "study_id": phantom.study_id,
                                              "units": {"ct": "HU", "mri": "a.u.", "pet": "SUV"}[phantom.modality]})
        array[...] = image
        if local:
            if os.path.exists(path):
                shutil.rmtree(path)
            os.rename(target, path)
    finally:
        if local and os.path.exists(target):
            shutil.rmtree(target)
    return name


WRITERS = {"nifti": write_nifti, "dicom": write_dicom, "zarr": write_zarr, "png": write_png}


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
    if fmt not in WRITERS:
        raise ValueError(f"format must be one of {', '.join(WRITERS)}, got {fmt!r}")
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
