"""Volume adapter: NIfTI, DICOM series, Zarr and PNG slice folders written by the brain phantom read back
exactly, in one orientation, with age labels; damaged files fail naming the file or are skipped."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch

from factory.data.adapters.volumes import open_volumes
from factory.data.phantoms.brain import generate
from factory.data.phantoms.brain_formats import write_dataset
from factory.errors import BadInputError

FORMATS = ("nifti", "dicom", "zarr", "png")


def _expected(seed: int, index: int, modality: str, dims: int, size: int) -> torch.Tensor:
    image = torch.from_numpy(generate(seed, index, modality, dims, size).image.astype(np.float32))
    if modality != "ct":
        image = image / torch.quantile(image.flatten(), 0.995)
    return image


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("modality", ["ct", "mri", "pet"])
def test_slices_read_back_in_every_format(tmp_path, fmt, modality):
    write_dataset(str(tmp_path), 2, modality, fmt, dims=2, size=32, seed=4)
    dataset = open_volumes(str(tmp_path))
    assert len(dataset) == 2 and dataset.label_names == ("age",)
    study = dataset[1]
    phantom = generate(4, 1, modality, 2, 32)
    assert study.study_id == phantom.study_id and study.image.dtype == torch.float32
    assert study.image.shape == (1, 32, 32)
    assert study.labels.tolist() == pytest.approx([phantom.age])
    assert study.meta["modality"] == modality and study.meta["format"] == fmt
    assert study.meta["spacing"] == pytest.approx(phantom.spacing, rel=1e-4)
    # CT exactly in HU; MRI/PET scaled to their 99.5th percentile (PET survives 16-bit quantisation).
    tolerance = 0 if modality == "ct" else 1e-3
    assert torch.allclose(study.image[0], _expected(4, 1, modality, 2, 32), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("fmt", FORMATS)
def test_volumes_read_back_in_every_format(tmp_path, fmt):
    write_dataset(str(tmp_path), 1, "ct", fmt, dims=3, size=32, seed=2)
    study = open_volumes(str(tmp_path), fmt=fmt)[0]
    assert study.image.shape == (1, 16, 32, 32)
    assert torch.equal(study.image[0], _expected(2, 0, "ct", 3, 32))
    assert len(study.meta["spacing"]) == 3


def test_s3_and_local_storage(storage_root):
    write_dataset(storage_root, 1, "mri", "nifti", size=32, seed=1)
    write_dataset(storage_root, 1, "ct", "zarr", size=32, seed=1)
    dataset = open_volumes(storage_root)
    studies = sorted((dataset[i] for i in range(len(dataset))), key=lambda s: s.study_id)
    assert [s.meta["format"] for s in studies] == ["zarr", "nifti"]  # brain-ct-... sorts before brain-mri-...
    assert torch.equal(studies[0].image[0], _expected(1, 0, "ct", 2, 32))


def test_resize_updates_spacing(tmp_path):
    write_dataset(str(tmp_path), 1, "pet", "nifti", size=64, seed=0)
    study = open_volumes(str(tmp_path), size=32)[0]
    assert study.image.shape == (1, 32, 32)
    assert study.meta["spacing"] == pytest.approx(tuple(2 * s for s in generate(0, 0, "pet", size=64).spacing))


def test_nifti_in_another_orientation_reads_the_same(tmp_path):
    """Real NIfTI files come in any orientation; the adapter reorients to one display convention."""
    write_dataset(str(tmp_path), 1, "ct", "nifti", dims=3, size=32, seed=0)
    path = tmp_path / "brain-ct-0-00000000.nii.gz"
    before = open_volumes(str(tmp_path))[0].image
    image = nib.load(path)
    flipped = image.slicer[::-1, :, ::-1]  # still the same anatomy: the affine records the flips
    nib.save(nib.Nifti1Image(np.asarray(flipped.dataobj), flipped.affine), path)
    assert torch.equal(open_volumes(str(tmp_path))[0].image, before)


def test_dicom_slices_are_ordered_by_position_not_name(tmp_path):
    write_dataset(str(tmp_path), 1, "mri", "dicom", dims=3, size=32, seed=0)
    folder = tmp_path / "brain-mri-0-00000000"
    before = open_volumes(str(tmp_path))[0].image
    names = sorted(os.listdir(folder))
    for name in names:
        os.rename(folder / name, folder / f"tmp-{name}")
    for name, new in zip(names, reversed(names)):
        os.rename(folder / f"tmp-{name}", folder / new)
    assert torch.equal(open_volumes(str(tmp_path))[0].image, before)


def test_truncated_nifti_names_the_file_or_is_skipped(tmp_path):
    write_dataset(str(tmp_path), 3, "ct", "nifti", size=32, seed=0)
    bad = tmp_path / "brain-ct-0-00000001.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    dataset = open_volumes(str(tmp_path))
    with pytest.raises(BadInputError, match="brain-ct-0-00000001.nii.gz: unreadable NIfTI"):
        dataset[1]
    tolerant = open_volumes(str(tmp_path), skip_bad=True)
    assert tolerant[1].study_id == "brain-ct-0-00000002"
    assert list(tolerant.skipped) == [str(bad)]


def test_label_csv_with_unknown_columns_is_rejected(tmp_path):
    write_dataset(str(tmp_path), 1, "ct", "png", size=32, seed=0)
    labels = tmp_path / "labels.csv"
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([lines[0] + ",sex", lines[1] + ",F"]) + "\n")
    with pytest.raises(BadInputError, match=r"labels.csv: .*unknown \['sex'\]"):
        open_volumes(str(tmp_path))


def test_missing_study_file_names_it(tmp_path):
    write_dataset(str(tmp_path), 1, "mri", "zarr", size=32, seed=0)
    labels = tmp_path / "labels.csv"
    labels.write_text(labels.read_text().replace("brain-mri-0-00000000.zarr", "gone.zarr"))
    with pytest.raises(BadInputError, match="gone.zarr"):
        open_volumes(str(tmp_path))[0]
