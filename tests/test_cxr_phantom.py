"""The chest X-ray phantom: determinism, labels, anatomy that reads as a film, findings on the right side."""

from __future__ import annotations

import argparse
import filecmp
import os

import numpy as np
import pytest

from factory.data import cli as data_cli
from factory.data.labels import CXR_LABELS, Finding
from factory.data.phantoms.cxr import generate_study, render, write_dataset

FINDINGS = CXR_LABELS[1:]


def test_study_depends_only_on_seed_and_index():
    a, b = generate_study(7, 3), generate_study(7, 3)
    assert np.array_equal(a.image, b.image) and a.report == b.report and a.findings == b.findings
    assert a.image.dtype == np.uint8 and a.image.shape == (128, 128)
    assert not np.array_equal(a.image, generate_study(7, 4).image)
    assert not np.array_equal(a.image, generate_study(8, 3).image)


def test_labels_follow_findings_and_report_has_sections():
    for index in range(40):
        study = generate_study(1, index)
        present = {f.name for f in study.findings}
        assert study.labels.dtype == np.float32
        for k, name in enumerate(FINDINGS, start=1):
            assert study.labels[k] == (1.0 if name in present else 0.0)
        assert study.labels[0] == (0.0 if present - {"Support Devices"} else 1.0)  # CheXpert: devices are not disease
        assert "FINDINGS:" in study.report and "IMPRESSION:" in study.report
        for f in study.findings:
            assert 0.0 <= f.severity <= 1.0


def test_prevalence_is_configurable_and_validated():
    none = [generate_study(0, i, size=32, prevalence={n: 0.0 for n in FINDINGS}) for i in range(10)]
    assert all(s.labels[0] == 1.0 and not s.findings for s in none)
    cardio = [generate_study(0, i, size=32, prevalence={"Cardiomegaly": 1.0}) for i in range(10)]
    assert all(s.labels[CXR_LABELS.index("Cardiomegaly")] == 1.0 for s in cardio)
    with pytest.raises(ValueError, match="unknown finding"):
        generate_study(0, 0, prevalence={"Fracture": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        generate_study(0, 0, prevalence={"Edema": 1.5})


@pytest.mark.parametrize("size", [16, 97, 300])
def test_any_size(size):
    assert generate_study(0, 0, size=size).image.shape == (size, size)


def test_size_limit():
    with pytest.raises(ValueError, match="1024"):
        generate_study(0, 0, size=1025)


def test_film_reads_as_a_chest_radiograph():
    """Lungs dark, mediastinum and spine bright, air outside the shoulders black."""
    lungs, mediastinum, corners = [], [], []
    for index in range(12):
        image = render(5, index, [], 128).astype(np.float32)
        lungs.append(np.r_[image[50:70, 30:40].ravel(), image[50:70, 88:98].ravel()].mean())
        mediastinum.append(image[40:70, 60:68].mean())
        corners.append(image[:6, :6].mean())
    assert np.mean(mediastinum) > np.mean(lungs) + 60
    assert np.mean(lungs) > np.mean(corners) + 20


def _difference_by_half(finding: Finding, index: int) -> tuple[float, float]:
    """How much the finding changes the patient's right (image left) and left (image right) halves."""
    base = render(11, index, [], 128).astype(np.float32)
    with_finding = render(11, index, [finding], 128).astype(np.float32)
    diff = np.abs(with_finding - base)
    return float(diff[:, :60].sum()), float(diff[:, 68:].sum())


@pytest.mark.parametrize("finding", [
    Finding("Pleural Effusion", 0.6, "right"), Finding("Pleural Effusion", 0.6, "left"),
    Finding("Pneumothorax", 0.6, "right"), Finding("Pneumothorax", 0.6, "left"),
    Finding("Consolidation/Pneumonia", 0.6, "right", "lobar"), Finding("Consolidation/Pneumonia", 0.6, "left", "patchy"),
    Finding("Nodule/Mass", 0.6, "right", "mass"), Finding("Nodule/Mass", 0.6, "left", "nodule"),
    Finding("Atelectasis", 0.6, "right", "plate-like"), Finding("Support Devices", 0.6, "right", "PICC"),
    Finding("Support Devices", 0.6, "left", "chest tube"),
])
def test_findings_appear_on_their_side(finding):
    for index in range(3):
        right_half, left_half = _difference_by_half(finding, index)
        if finding.laterality == "right":
            assert right_half > 2 * left_half
        else:
            assert left_half > 2 * right_half


def test_cardiomegaly_widens_the_heart_and_severity_scales_effusion():
    normal = render(2, 0, [], 128).astype(np.float32)
    big = render(2, 0, [Finding("Cardiomegaly", 1.0)], 128).astype(np.float32)
    assert big[70:100, 64:110].mean() > normal[70:100, 64:110].mean() + 10  # left heart border moves out
    subtle = render(2, 0, [Finding("Pleural Effusion", 0.0, "bilateral")], 128).astype(np.float32)
    large = render(2, 0, [Finding("Pleural Effusion", 1.0, "bilateral")], 128).astype(np.float32)
    assert np.abs(large - normal).sum() > 4 * np.abs(subtle - normal).sum() > 0


def test_write_dataset_is_deterministic(tmp_path):
    write_dataset(str(tmp_path / "a"), 4, size=48, layout="folder", seed=9)
    write_dataset(str(tmp_path / "b"), 4, size=48, layout="folder", seed=9)
    names = sorted(os.listdir(tmp_path / "a" / "images"))
    assert len(names) == 4
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a" / "images", tmp_path / "b" / "images", names, shallow=False)
    assert not mismatch and not errors
    assert filecmp.cmp(tmp_path / "a" / "labels.csv", tmp_path / "b" / "labels.csv", shallow=False)


def test_cli_writes_the_named_layout(tmp_path):
    parser = argparse.ArgumentParser()
    data_cli.configure(parser)
    args = parser.parse_args(["cxr", "--out", str(tmp_path), "--count", "3", "--size", "40", "--layout", "nih"])
    assert data_cli.run(args) == 0
    assert sorted(os.listdir(tmp_path / "images")) == ["00000001_000.png", "00000002_000.png", "00000003_000.png"]
