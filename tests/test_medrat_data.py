"""Unpaired training data (factory.data.unpaired): the image and report sides never share a patient,
neither side holds the other half of a study, the split follows the seed, it works from phantoms and
from the adapters' layouts, and the run's data info (the bundle's fingerprint) records it."""

from __future__ import annotations

import csv
import json

import pytest

from factory.config import TrainConfig, TrainDataConfig
from factory.data.phantoms.cxr import write_dataset
from factory.data.training import check_parts, open_part
from factory.data.unpaired import patient_hash, split_record
from factory.errors import BadInputError
from factory.train.data import prepare_data
from factory.train.recipes import get_recipe


def sides(data: TrainDataConfig):
    """(image side, report side) as lists of (study id, patient id, has image, report)."""
    out = []
    for part in ("images", "reports"):
        with open_part(data, part) as dataset:
            out.append([(s.study_id, s.meta["patient_id"], s.image.numel() > 1, s.report)
                        for s in (dataset.load(i) for i in range(len(dataset)))])
    return out


def patients(side) -> set[str]:
    return {patient for _, patient, _, _ in side}


def test_one_phantom_source_is_halved_by_patient_and_follows_the_seed():
    images, reports = sides(TrainDataConfig(count=30, size=16, seed=0))
    assert not patients(images) & patients(reports)
    assert len(images) + len(reports) == 30 and 8 <= len(images) <= 22
    assert all(has_image and report is None for _, _, has_image, report in images)
    assert all(not has_image and report for _, _, has_image, report in reports)
    assert sides(TrainDataConfig(count=30, size=16, seed=0))[0] == images  # deterministic
    # Another seed draws other phantoms and splits them anew.
    other_images, _ = sides(TrainDataConfig(count=30, size=16, seed=1))
    assert [s.split("-")[-1] for s, *_ in other_images] != [s.split("-")[-1] for s, *_ in images]


def test_two_sources_of_other_patients_keep_every_study(tmp_path):
    write_dataset(str(tmp_path / "chexpert"), 6, size=32, layout="chexpert", seed=0)
    write_dataset(str(tmp_path / "iu"), 5, size=32, layout="iu-xray", seed=1)
    data = {"source": "dataset", "path": str(tmp_path / "chexpert"), "layout": "chexpert", "size": 16}
    images, reports = sides(TrainDataConfig(**data, reports={"path": str(tmp_path / "iu"), "layout": "iu-xray"}))
    assert len(images) == 6 and len(reports) == 5
    assert patients(images) == {f"patient{i:05d}" for i in range(1, 7)}
    assert patients(reports) == {f"iu-{i}" for i in range(1, 6)}
    # Phantom reports as the report side, films never drawn.
    assert len(sides(TrainDataConfig(**data, reports={"source": "phantom-cxr", "count": 4, "seed": 5}))[1]) == 4


def test_one_paired_dataset_is_split_by_patient_whatever_source_names_it(tmp_path):
    write_dataset(str(tmp_path / "mimic"), 12, size=32, layout="mimic-cxr", seed=0)
    mimic = {"source": "dataset", "path": str(tmp_path / "mimic"), "layout": "mimic-cxr", "size": 16}
    images, reports = sides(TrainDataConfig(**mimic))
    assert patients(images) | patients(reports) == {f"p{10000000 + i}" for i in range(12)}
    assert not patients(images) & patients(reports)
    # The same dataset named again as the report source is the same patients: split the same way.
    twice = TrainDataConfig(**mimic, reports={"path": mimic["path"], "layout": "mimic-cxr"})
    assert sides(twice) == [images, reports]


def test_every_study_of_a_patient_lands_on_one_side(tmp_path):
    write_dataset(str(tmp_path / "folder"), 12, size=32, layout="folder", seed=0)
    table = tmp_path / "folder" / "labels.csv"
    rows = list(csv.DictReader(table.open()))
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["patient_id", *rows[0]])
        writer.writeheader()
        writer.writerows({"patient_id": f"P{i // 3}", **row} for i, row in enumerate(rows))
    images, reports = sides(TrainDataConfig(source="dataset", path=str(tmp_path / "folder"), layout="folder", size=16))
    assert patients(images) | patients(reports) == {"P0", "P1", "P2", "P3"}
    assert not patients(images) & patients(reports)
    assert len(images) % 3 == 0 and len(reports) % 3 == 0


def test_images_without_reports_need_a_report_source(tmp_path):
    data = TrainDataConfig(source="dataset", path=str(tmp_path), layout="nih")
    with pytest.raises(BadInputError, match=r"\(missing \['reports'\]\); give data.reports"):
        check_parts(data, ("images", "reports"), "medrat")
    with pytest.raises(ValueError, match="reports is for chest X-ray"):
        TrainDataConfig(source="phantom-brain", reports={"source": "phantom-cxr"})


def test_the_runs_data_info_records_both_sides_patients_and_refuses_an_overlap(tmp_path):
    config = TrainConfig(name="split", storage_path=str(tmp_path), recipe="medrat", steps=1,
                         data={"count": 20, "size": 16, "min_word_count": 1})
    prepared = prepare_data(config, get_recipe("medrat"), progress=False)
    record = json.loads((tmp_path / "split" / "data_info.json").read_text())["unpaired"]
    assert prepared["info"]["unpaired"] == record
    images, reports = sides(config.data)
    for side, studies in (("images", images), ("reports", reports)):
        assert record[side]["studies"] == len(studies)
        assert record[side]["patient_hashes"] == sorted({patient_hash(p) for p in patients(studies)})
    assert record["shared_patients"] == 0
    assert not set(record["images"]["patient_hashes"]) & set(record["reports"]["patient_hashes"])
    with pytest.raises(BadInputError, match="1 patients are on both sides"):
        split_record(["a", "b"], ["b", "c"], ["s1", "s2"], ["s3", "s4"])
