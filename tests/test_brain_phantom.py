"""Brain phantom: determinism, unpaired draws, age-driven atrophy, modality physics, safe writes."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import pydicom
import pytest

from factory.data.phantoms import brain, brain_formats
from factory.data.phantoms.brain import anatomy, generate
from factory.data.phantoms.brain_formats import write_dataset


def test_same_seed_same_patient_other_seed_other_patient():
    a, b = generate(3, 7, "ct", size=48), generate(3, 7, "ct", size=48)
    assert np.array_equal(a.image, b.image) and a.age == b.age and a.study_id == b.study_id
    assert not np.array_equal(a.image, generate(4, 7, "ct", size=48).image)


def test_modalities_are_drawn_independently():
    """Patient n of CT and of MRI are different people: ages and head geometry differ (unpaired data)."""
    ages = {m: [generate(0, i, m, size=32).age for i in range(20)] for m in ("ct", "mri", "pet")}
    assert ages["ct"] != ages["mri"] and ages["mri"] != ages["pet"]
    assert abs(np.corrcoef(ages["ct"], ages["mri"])[0, 1]) < 0.6
    assert all(20 <= a <= 90 for values in ages.values() for a in values)


def test_paired_ct_is_the_same_subject_on_the_source_grid():
    """The reference of a translation: the MRI patient's own head as CT, matching its outline better than
    another patient's does."""
    for dims in (2, 3):
        mri, ct = generate(1, 3, "mri", dims, size=48), brain.paired_ct(1, 3, "mri", dims, size=48)
        assert ct.image.shape == mri.image.shape and ct.spacing == mri.spacing and ct.age == mri.age
        assert ct.modality == "ct" and ct.image.dtype == np.int16 and ct.image.min() < -900 < 500 < ct.image.max()  # air, bone
        head = ct.image > -500

        def dice(a, b):
            return 2 * (a & b).sum() / (a.sum() + b.sum())

        assert dice(mri.image > 200, head) > 0.95 > dice(generate(1, 4, "mri", dims, size=48).image > 200, head)


def test_image_types_shapes_and_spacing():
    ct, mri, pet = (generate(0, 1, m, size=64) for m in ("ct", "mri", "pet"))
    assert (ct.image.dtype, mri.image.dtype, pet.image.dtype) == (np.int16, np.uint16, np.float32)
    assert ct.image.shape == mri.image.shape == pet.image.shape == (64, 64)
    assert pet.spacing[0] > ct.spacing[0] > mri.spacing[0]  # each scanner its own field of view
    volume = generate(0, 1, "mri", dims=3, size=32)
    assert volume.image.shape == (16, 32, 32) and len(volume.spacing) == 3


def _tissue_means(modality: str, index: int, age: float | None = None, size: int = 128) -> dict[str, float]:
    """Mean image value over voxels made almost purely of one tissue (skull: both tables and diploe)."""
    image = generate(0, index, modality, size=size, age=age).image.astype(np.float64)
    _, fractions, *_ = anatomy(0, index, modality, size=size, age=age)
    fractions["skull"] = fractions.pop("bone") + fractions.pop("diploe")
    # CSF away from the skull, whose blooming raises the thin subarachnoid layer next to it.
    central = np.hypot(*np.indices(image.shape) - (size - 1) / 2) < size / 6
    fractions["ventricle"] = np.where(central, fractions["csf"], 0)
    means = {t: float(image[f > 0.9].mean()) for t, f in fractions.items() if (f > 0.9).sum() >= 5}
    means["air"] = float(image[sum(fractions.values()) < 0.01].mean())
    return means


def test_ct_is_in_hounsfield_units():
    hu = _tissue_means("ct", 2, age=70)
    assert hu["air"] == pytest.approx(-1000, abs=30)
    assert hu["skull"] > 600
    assert 0 <= hu["ventricle"] <= 15
    assert 30 <= hu["gm"] <= 45 and 20 <= hu["wm"] <= 35 and hu["gm"] - hu["wm"] < 20  # small grey/white contrast


def test_mri_is_t1_weighted():
    t1 = _tissue_means("mri", 2, age=70)
    assert t1["wm"] > t1["gm"] > t1["csf"] > t1["air"]
    assert t1["skull"] < t1["gm"] < t1["scalp"]  # bone dark, scalp fat bright
    assert t1["air"] > 0  # Rician noise floor: magnitude images have no zero background


def test_pet_is_metabolic_and_falls_with_age():
    young, old = _tissue_means("pet", 4, age=25), _tissue_means("pet", 4, age=85)
    assert young["gm"] > young["wm"] and old["wm"] > old["csf"]
    assert old["gm"] < 0.85 * young["gm"]


def _high_frequency_share(image: np.ndarray) -> float:
    """Share of the image's power above 0.2 cycles per voxel."""
    power = np.abs(np.fft.fft2(image - image.mean())) ** 2
    freq = np.fft.fftfreq(image.shape[0])
    return float(power[np.hypot(*np.meshgrid(freq, freq)) > 0.2].sum() / power.sum())


def test_pet_has_the_lowest_resolution():
    share = {m: np.mean([_high_frequency_share(generate(0, i, m, size=96).image.astype(float)) for i in range(3)])
             for m in ("ct", "pet")}
    assert share["pet"] < 0.6 * share["ct"]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_age_drives_atrophy_continuously(index):
    """Same patient at 25, 55, 85: more CSF (ventricles, sulci, gap) and thinner cortex, head unchanged."""
    csf, cortex, head_size = [], [], []
    for age in (25, 55, 85):
        head, fractions, *_ = anatomy(0, index, "ct", dims=3, size=40, age=age)
        csf.append(float(fractions["csf"].sum()))
        cortex.append(head.cortex)
        head_size.append(head.semi)
    assert csf[0] < csf[1] < csf[2] and csf[2] > 1.5 * csf[0]
    assert cortex[0] > cortex[1] > cortex[2]
    assert head_size[0] == head_size[1] == head_size[2]


def test_write_dataset_lists_studies_and_labels(tmp_path):
    write_dataset(str(tmp_path), 3, "mri", "nifti", size=32, seed=5)
    with open(tmp_path / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["study_id"] for r in rows] == [brain.study_id(5, i, "mri") for i in range(3)]
    assert all((tmp_path / r["path"]).exists() and r["modality"] == "mri" for r in rows)
    assert [float(r["age"]) for r in rows] == [generate(5, i, "mri", size=32).age for i in range(3)]


def test_failed_write_keeps_finished_studies(tmp_path, monkeypatch):
    write_dataset(str(tmp_path), 2, "pet", "nifti", size=32, seed=1)  # an earlier run in the same folder
    real = brain_formats.WRITERS["nifti"]

    def failing(root, phantom):
        if phantom.index == 2:
            raise OSError("disk full")
        return real(root, phantom)

    monkeypatch.setitem(brain_formats.WRITERS, "nifti", failing)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(str(tmp_path), 5, "ct", "nifti", size=32, seed=1)
    with open(tmp_path / "labels.csv") as f:
        listed = {r["study_id"] for r in csv.DictReader(f)}
    assert listed == {brain.study_id(1, i, m) for i in range(2) for m in ("pet", "ct")}
    assert not [n for n in os.listdir(tmp_path) if "partial" in n]


def test_dicom_series_is_deterministic_with_proper_tags(tmp_path):
    phantom = generate(2, 3, "ct", dims=3, size=32)
    first = brain_formats.dicom_slices(phantom)
    second = brain_formats.dicom_slices(generate(2, 3, "ct", dims=3, size=32))
    assert first == second and len(first) == 16
    slices = [pydicom.dcmread(io.BytesIO(data)) for data in first]
    assert len({s.SOPInstanceUID for s in slices}) == 16
    assert len({s.SeriesInstanceUID for s in slices}) == 1 and len({s.StudyInstanceUID for s in slices}) == 1
    other = pydicom.dcmread(io.BytesIO(brain_formats.dicom_slices(generate(2, 3, "mri", dims=3, size=32))[0]))
    assert other.SOPInstanceUID != slices[0].SOPInstanceUID and other.StudyInstanceUID != slices[0].StudyInstanceUID
    heights = [float(s.ImagePositionPatient[2]) for s in slices]
    assert heights == sorted(heights)
    assert (slices[0].Modality, float(slices[0].RescaleIntercept), slices[0].PatientAge) == \
        ("CT", -1024.0, f"{int(phantom.age):03d}Y")
    hu = slices[5].pixel_array.astype(np.int32) + int(slices[5].RescaleIntercept)
    assert np.array_equal(hu, phantom.image[5])


def test_generation_is_fast():
    import time

    start = time.perf_counter()
    for index in range(20):
        generate(0, index, "ct")
    assert (time.perf_counter() - start) / 20 < 0.25  # ~15 ms on one idle core; generous for a shared CI box
