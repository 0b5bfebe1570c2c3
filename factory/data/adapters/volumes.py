"""Volumes (NIfTI, DICOM series, Zarr arrays, PNG slice folders) -> `StudyDataset` labelled with age.

Expected tree (a local folder or any fsspec URL); the brain phantom writes exactly this:

    ROOT/labels.csv                 study_id,age,modality,path[,spacing]
    ROOT/<id>.nii | <id>.nii.gz     NIfTI-1/2, any orientation (reoriented to RAS, then displayed axially)
    ROOT/<id>/*.dcm                 a DICOM series, one file per slice (sorted by ImagePositionPatient)
    ROOT/<id>.zarr                  a Zarr array (rows, columns) or (slices, rows, columns)
    ROOT/<id>/*.png                 8- or 16-bit slices in name order (CT: HU + 1024)

`path` is relative to ROOT; `modality` is ct, mri or pet; `age` in years (empty: unknown, NaN);
`spacing` (mm per image axis, space-separated) is used only where the file carries none (PNG).

A study becomes `Study.image` float32 (1, H, W) for one slice or (1, D, H, W) for a volume, rows
anterior to posterior, columns patient right to left, slices inferior to superior. CT is in
Hounsfield units; MRI and PET are divided by their 99.5th percentile (scanner units differ) and
clipped at 0. `size` resizes each slice (H, W), antialiased. `labels` is tensor([age]);
`meta` holds modality, spacing (mm, image axis order, after resizing), format and source.
"""

from __future__ import annotations

import csv
import gzip
import io

import numpy as np
import torch
import torch.nn.functional as F

from factory import storage
from factory.data.dataset import Study, StudyDataset
from factory.data.hounsfield import CT_PNG_OFFSET
from factory.errors import BadInputError

FORMATS = ("nifti", "dicom", "zarr", "png")
REQUIRED_COLUMNS = ("study_id", "age", "modality", "path")
OPTIONAL_COLUMNS = ("spacing",)
MODALITIES = ("ct", "mri", "pet")
NORMALISE_PERCENTILE = 99.5


def detect_format(root: str, path: str, storage_options=None) -> str:
    name = path.lower().rstrip("/")
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".zarr"):
        return "zarr"
    names = storage.list_names(storage.join(root, path), storage_options)
    if not names:
        raise BadInputError(storage.join(root, path), "not found, or an empty folder")
    if any(n.lower().endswith(".png") for n in names):
        return "png"
    return "dicom"  # DICOM files often carry no extension


def _read_nifti(url: str, storage_options) -> tuple[np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    data = storage.read_bytes(url, storage_options)
    try:
        if url.endswith(".gz"):
            data = gzip.decompress(data)
        header_size = int.from_bytes(data[:4], "little")
        kind = nib.Nifti2Image if header_size in (540, 0x1C020000) else nib.Nifti1Image  # either byte order
        image = nib.as_closest_canonical(kind.from_bytes(data))
        volume = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as err:  # nibabel, gzip and numpy each raise their own types for a damaged file
        raise BadInputError(url, f"unreadable NIfTI ({type(err).__name__}: {err})") from err
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise BadInputError(url, f"expected a 3-D NIfTI (or 2-D with one slice), got shape {volume.shape}")
    sx, sy, sz = (float(z) for z in image.header.get_zooms()[:3])
    # Canonical RAS (i: left->right, j: posterior->anterior, k: inferior->superior) to the display axes.
    volume = volume.transpose(2, 1, 0)[:, ::-1, ::-1]
    return np.ascontiguousarray(volume), (sz, sy, sx)


def _read_dicom(url: str, storage_options) -> tuple[np.ndarray, tuple[float, ...]]:
    import pydicom

    slices = []
    for name in storage.list_names(url, storage_options):
        source = storage.join(url, name)
        try:
            ds = pydicom.dcmread(io.BytesIO(storage.read_bytes(source, storage_options)))
            pixels = ds.pixel_array.astype(np.float32)
            pixels = pixels * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
        except Exception as err:  # pydicom raises many types for damaged or non-image files
            raise BadInputError(source, f"unreadable DICOM ({type(err).__name__}: {err})") from err
        normal = np.cross(*np.reshape(np.asarray(ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float), (2, 3)))
        position = np.asarray(ds.get("ImagePositionPatient", [0, 0, ds.get("InstanceNumber", 0)]), float)
        slices.append((float(position @ normal), pixels, ds))
    if not slices:
        raise BadInputError(url, "no DICOM files in the series folder")
    slices.sort(key=lambda s: s[0])
    shapes = {s[1].shape for s in slices}
    if len(shapes) != 1:
        raise BadInputError(url, f"slices of different sizes in one series: {sorted(shapes)}")
    first = slices[0][2]
    dy, dx = (float(v) for v in first.get("PixelSpacing", [1.0, 1.0]))
    gaps = np.diff([s[0] for s in slices])
    dz = float(np.median(gaps)) if len(gaps) else float(first.get("SliceThickness", 1.0))
    return np.stack([s[1] for s in slices]), (dz, dy, dx)


def _read_zarr(url: str, storage_options) -> tuple[np.ndarray, tuple[float, ...] | None]:
    import zarr

    try:
        options = storage_options or (storage.s3_options_from_env() if storage.protocol_of(url) == "s3" else None)
        # zarr refuses storage options for plain local paths.
        array = zarr.open_array(url, mode="r", **({"storage_options": options} if "://" in url else {}))
        volume = np.asarray(array[...], dtype=np.float32)
        attrs = dict(array.attrs)
    except Exception as err:  # zarr raises its own and the store's errors
        raise BadInputError(url, f"unreadable Zarr array ({type(err).__name__}: {err})") from err
    volume = volume * float(attrs.get("rescale_slope", 1.0)) + float(attrs.get("rescale_intercept", 0.0))
    spacing = tuple(float(s) for s in attrs["spacing"]) if "spacing" in attrs else None
    return volume, spacing


def _read_png(url: str, storage_options) -> tuple[np.ndarray, None]:
    from PIL import Image

    planes = []
    for name in (n for n in storage.list_names(url, storage_options) if n.lower().endswith(".png")):
        source = storage.join(url, name)
        try:
            with Image.open(io.BytesIO(storage.read_bytes(source, storage_options))) as image:
                planes.append(np.asarray(image.convert("I") if image.mode not in ("I;16", "I", "L") else image,
                                         dtype=np.float32))
        except Exception as err:  # PIL raises several types for damaged files
            raise BadInputError(source, f"unreadable PNG ({type(err).__name__}: {err})") from err
    if len({p.shape for p in planes}) != 1:
        raise BadInputError(url, "slices of different sizes in one folder")
    return np.stack(planes), None


READERS = {"nifti": _read_nifti, "dicom": _read_dicom, "zarr": _read_zarr, "png": _read_png}


def read_labels(root: str, storage_options=None) -> list[dict]:
    url = storage.join(root, "labels.csv")
    text = storage.read_bytes(url, storage_options).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    columns = tuple(reader.fieldnames or ())
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        raise BadInputError(url, f"columns must be {', '.join(REQUIRED_COLUMNS)} (optional: spacing); "
                                 f"missing {missing or 'none'}, unknown {unknown or 'none'}")
    rows = list(reader)
    for line, row in enumerate(rows, start=2):
        if row["modality"] not in MODALITIES:
            raise BadInputError(url, f"line {line}: modality must be one of {', '.join(MODALITIES)}, "
                                     f"got {row['modality']!r}")
        try:
            float(row["age"] or "nan")
        except ValueError as err:
            raise BadInputError(url, f"line {line}: age {row['age']!r} is not a number") from err
    return rows


def resize_slices(volume: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(D, H, W) -> (D, *size), antialiased bilinear."""
    return F.interpolate(volume[:, None], size=size, mode="bilinear", antialias=True, align_corners=False)[:, 0]


class VolumeDataset(StudyDataset):
    label_names = ("age",)

    def __init__(self, root: str, fmt: str | None = None, size: int | tuple[int, int] | None = None,
                 skip_bad: bool = False, storage_options=None):
        super().__init__(skip_bad=skip_bad)
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.root, self.fmt, self.storage_options = root, fmt, storage_options
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size else None)
        self.rows = read_labels(root, storage_options)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> Study:
        row = self.rows[index]
        url = storage.join(self.root, row["path"])
        fmt = self.fmt or detect_format(self.root, row["path"], self.storage_options)
        volume, spacing = READERS[fmt](url, self.storage_options)
        if volume.ndim == 2:
            volume = volume[None]
        if spacing is None and row.get("spacing"):
            spacing = tuple(float(s) for s in row["spacing"].split())
        spacing = tuple(spacing) if spacing else (1.0, 1.0)
        dz, (dy, dx) = (spacing[0] if len(spacing) == 3 else float("nan")), spacing[-2:]
        modality = row["modality"]
        if fmt == "png" and modality == "ct":
            volume = volume - CT_PNG_OFFSET
        tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
        if self.size and tuple(tensor.shape[1:]) != self.size:
            dy, dx = dy * tensor.shape[1] / self.size[0], dx * tensor.shape[2] / self.size[1]
            tensor = resize_slices(tensor, self.size)
        if modality != "ct":
            # A strided sample keeps the percentile cheap on large volumes.
            sample = tensor.flatten()[:: max(1, tensor.numel() // 1_000_000)]
            tensor = (tensor / torch.quantile(sample, NORMALISE_PERCENTILE / 100).clamp_min(1e-6)).clamp_min(0)
        single = tensor.shape[0] == 1
        image = tensor if single else tensor[None]
        axis_spacing = (dy, dx) if single else (dz, dy, dx)
        return Study(study_id=row["study_id"], image=image.contiguous(),
                     labels=torch.tensor([float(row["age"] or "nan")], dtype=torch.float32),
                     meta={"modality": modality, "spacing": tuple(float(s) for s in axis_spacing), "format": fmt,
                           "source": url})


def open_volumes(root: str, fmt: str | None = None, size: int | tuple[int, int] | None = None,
                 skip_bad: bool = False, storage_options=None) -> VolumeDataset:
    """Volumes under `root` (see the module docstring for the tree) as a `StudyDataset`."""
    return VolumeDataset(root, fmt=fmt, size=size, skip_bad=skip_bad, storage_options=storage_options)
