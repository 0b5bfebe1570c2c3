"""Chest X-ray adapters on tiny fixtures: phantom-written layouts, hand-written tables, 16-bit PNGs,
JPEGs, odd sizes, and bad input (unreadable image, missing report, unknown label columns)."""

from __future__ import annotations

import csv
import math
import os

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from factory.data.adapters import open_dataset
from factory.data.labels import CXR_LABELS
from factory.data.phantoms.cxr import generate_study, write_dataset
from factory.errors import BadInputError

LAYOUTS = ["mimic-cxr", "iu-xray", "chexpert", "nih", "folder"]
SEED = 4


@pytest.fixture(scope="module")
def phantom_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    for layout in LAYOUTS:
        write_dataset(str(base / layout), 5, size=40, layout=layout, seed=SEED)
    return base


def _fresh_copy(phantom_roots, layout, tmp_path):
    fs = fsspec.filesystem("file")
    fs.copy(str(phantom_roots / layout), str(tmp_path / layout), recursive=True)
    return tmp_path / layout


@pytest.mark.parametrize("layout", LAYOUTS)
def test_phantom_layouts_load_back(phantom_roots, layout):
    ds = open_dataset(str(phantom_roots / layout), layout, size=32)
    assert len(ds) == 5
    for i in range(5):
        truth = generate_study(SEED, i, size=40)
        study = ds[i]
        assert study.image.shape == (1, 32, 32) and study.image.dtype == torch.float32
        assert 0.0 <= float(study.image.min()) and float(study.image.max()) <= 1.0
        labels = study.labels.numpy()
        if layout == "nih":  # NIH has no Support Devices label
            assert math.isnan(labels[-1])
            devices_only = [f.name for f in truth.findings] == ["Support Devices"]
            expected = truth.labels[:-1].copy()
            expected[0] = 1.0 if devices_only else expected[0]
            np.testing.assert_array_equal(labels[:-1], expected)
        else:
            np.testing.assert_array_equal(labels, truth.labels)
        if layout in ("chexpert", "nih"):
            assert study.report is None
        elif layout == "folder":  # a CSV cell is taken verbatim
            assert study.report == truth.report
        else:  # free-text files: line wrapping collapsed
            assert study.report == " ".join(truth.report.split())


def test_full_resolution_matches_the_phantom(phantom_roots):
    study = open_dataset(str(phantom_roots / "folder"), "folder")[0]
    expected = generate_study(SEED, 0, size=40).image.astype(np.float32) / 255.0
    np.testing.assert_allclose(study.image[0].numpy(), expected, atol=1e-6)


def _folder(root, rows, header=("study_id", "path", "report", *CXR_LABELS)):
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "labels.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(root)


def test_16bit_png_jpeg_and_odd_sizes(tmp_path):
    wide = (np.arange(97 * 131, dtype=np.uint32).reshape(97, 131) * 5 % 65536).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "a.png")
    rgb = np.random.default_rng(0).integers(0, 255, (131, 97, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "b.jpg", quality=90)
    blank = [""] * len(CXR_LABELS)
    root = _folder(tmp_path, [["a", "a.png", "FINDINGS: x. IMPRESSION: y.", *blank],
                              ["b", "b.jpg", "FINDINGS: z. IMPRESSION: w.", "1", *blank[1:]]])
    native = open_dataset(root, "folder")
    a = native[0]
    assert a.image.shape == (1, 97, 131)
    np.testing.assert_allclose(a.image[0].numpy(), wide / 65535.0, atol=1e-7)
    assert torch.isnan(a.labels).all()
    b = native[1]
    assert b.image.shape == (1, 131, 97) and b.labels[0] == 1.0
    resized = open_dataset(root, "folder", size=64)
    assert resized[0].image.shape == (1, 64, 64) and resized[1].image.shape == (1, 64, 64)
    assert abs(float(resized[0].image.mean()) - float(a.image.mean())) < 0.02


def test_chexpert_and_nih_label_mapping(tmp_path):
    from factory.data.adapters.cxr import CHEXPERT_COLUMNS, NIH_COLUMNS

    chex = tmp_path / "chexpert"
    (chex / "train" / "patient00001" / "study1").mkdir(parents=True)
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(chex / "train/patient00001/study1/view1_frontal.jpg")
    row = dict.fromkeys(CHEXPERT_COLUMNS, "")
    row.update({"Path": "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Consolidation": "-1.0",
                "Pneumonia": "", "Lung Lesion": "1.0", "Edema": "0.0", "Fracture": "1.0"})
    with open(chex / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CHEXPERT_COLUMNS)
        writer.writeheader()
        writer.writerow(row)
    labels = dict(zip(CXR_LABELS, open_dataset(str(chex), "chexpert")[0].labels.tolist()))
    assert labels["Consolidation/Pneumonia"] == -1.0 and labels["Nodule/Mass"] == 1.0 and labels["Edema"] == 0.0
    assert math.isnan(labels["Cardiomegaly"])

    nih = tmp_path / "nih"
    (nih / "images_001" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 4), np.uint8)).save(nih / "images_001/images/00000007_001.png")  # RGBA, as some are
    with open(nih / "Data_Entry_2017.csv", "w", newline="") as f:
        f.write(",".join(NIH_COLUMNS) + ",\n")  # the real file ends its header with a comma
        f.write("00000007_001.png,Effusion|Mass|Infiltration,1,7,58,M,PA,2500,2048,0.168,0.168,\n")
    study = open_dataset(str(nih), "nih")[0]
    labels = dict(zip(CXR_LABELS, study.labels.tolist()))
    assert labels["Pleural Effusion"] == 1.0 and labels["Nodule/Mass"] == 1.0 and labels["No Finding"] == 0.0
    assert labels["Edema"] == 0.0 and math.isnan(labels["Support Devices"])
    assert study.study_id == "00000007_001"


def test_unreadable_image_raises_or_is_skipped(phantom_roots, tmp_path):
    root = _fresh_copy(phantom_roots, "mimic-cxr", tmp_path)
    images = sorted(p for p in fsspec.filesystem("file").find(str(root / "files")) if p.endswith(".jpg"))
    with open(images[1], "wb") as f:
        f.write(b"not a jpeg")
    ds = open_dataset(str(root), "mimic-cxr")
    with pytest.raises(BadInputError, match=os.path.basename(images[1])):
        ds[1]
    tolerant = open_dataset(str(root), "mimic-cxr", skip_bad=True)
    assert tolerant[1].study_id == "s50000002"  # the next readable study
    assert list(tolerant.skipped) == [images[1]] and "unreadable" in tolerant.skipped[images[1]]


def test_missing_report_raises_or_is_skipped(phantom_roots, tmp_path):
    root = _fresh_copy(phantom_roots, "mimic-cxr", tmp_path)
    report = root / "files" / "p10" / "p10000000" / "s50000000.txt"
    report.unlink()
    with pytest.raises(BadInputError, match="s50000000.txt"):
        open_dataset(str(root), "mimic-cxr")[0]
    tolerant = open_dataset(str(root), "mimic-cxr", skip_bad=True)
    assert tolerant[0].study_id == "s50000001" and str(report) in tolerant.skipped

    iu = _fresh_copy(phantom_roots, "iu-xray", tmp_path)
    xml = iu / "NLMCXR_reports" / "ecgen-radiology" / "2.xml"
    text = xml.read_text()
    start, end = text.index('<AbstractText Label="FINDINGS">'), text.index("<MeSH>")
    xml.write_text(text[:start] + "</Abstract></Article></MedlineCitation>" + text[end:])
    with pytest.raises(BadInputError, match="2.xml"):
        open_dataset(str(iu), "iu-xray")
    tolerant = open_dataset(str(iu), "iu-xray", skip_bad=True)
    assert len(tolerant) == 4 and "no report" in tolerant.skipped[str(xml)]

    blank = [""] * len(CXR_LABELS)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "c.png")
    folder = _folder(tmp_path, [["c", "c.png", "", *blank], ["d", "c.png", "FINDINGS: ok.", *blank]])
    with pytest.raises(BadInputError, match="labels.csv.*line 2"):
        open_dataset(folder, "folder")
    assert [s.study_id for s in open_dataset(folder, "folder", skip_bad=True).records] == ["d"]


def test_unknown_label_columns_raise_or_are_skipped(phantom_roots, tmp_path):
    root = _fresh_copy(phantom_roots, "chexpert", tmp_path)
    table = root / "train.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0] + ",Mystery Finding"] + [line + ",1.0" for line in lines[1:]]) + "\n")
    with pytest.raises(BadInputError, match=r"train\.csv.*Mystery Finding"):
        open_dataset(str(root), "chexpert")
    tolerant = open_dataset(str(root), "chexpert", skip_bad=True)
    assert len(tolerant) == 5 and "Mystery Finding" in tolerant.skipped[str(table)]

    nih = _fresh_copy(phantom_roots, "nih", tmp_path)
    table = nih / "Data_Entry_2017.csv"
    lines = table.read_text().splitlines()
    first = lines[1].split(",")
    first[1] = "Dragon"
    table.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    with pytest.raises(BadInputError, match="Dragon"):
        open_dataset(str(nih), "nih")
    assert len(open_dataset(str(nih), "nih", skip_bad=True)) == 4


def test_unknown_layout():
    with pytest.raises(ValueError, match="unknown layout"):
        open_dataset("/nowhere", "dicom-wonderland")


def test_adapter_reads_from_s3(phantom_roots, s3_root):
    from factory import storage

    fs, path = storage.filesystem(s3_root)
    fs.put(str(phantom_roots / "folder"), path, recursive=True)
    ds = open_dataset(s3_root, "folder", size=24)
    assert len(ds) == 5 and ds[4].image.shape == (1, 24, 24)
    assert ds[4].report == generate_study(SEED, 4, size=40).report
