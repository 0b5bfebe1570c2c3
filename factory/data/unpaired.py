"""Unpaired chest X-ray training data: two disjoint sets of studies, the images of one set of patients
(with labels, without reports) and the reports of another (with labels, without images), for a recipe
that must never see an image with its report (MedRAT).

Sources. The image side reads the training data config itself (phantom-cxr, or any chest X-ray
layout: chexpert, nih, folder, mimic-cxr, iu-xray). The report side reads `data.reports` when given
(phantom reports, or mimic-cxr, iu-xray, folder), else the same data's reports.

Split by patient. A patient found in both sources goes to one side only, by a coin of (data.seed,
patient id) (sha256, the same on every machine and run); a patient found in one source stays on that
side. So one paired source (phantom-cxr, mimic-cxr, iu-xray) is halved by patient, while two sources
of different patients (CheXpert images, MIMIC-CXR reports) keep all their studies. Patient ids are the
adapters' (`patient_id(index)`, read from the dataset's index without decoding anything; see
factory/data/adapters/cxr.py); a phantom study is a patient of its own.

Neither side ever holds the other's half of a study: the image side loads no report, the report side
decodes no image (`no_image()` stands in for it), so neither reaches the training caches.

Proof of the split (`split_record`, kept in the run's data info and in the exported bundle's training
data): for each side its study and patient counts and the sorted sha256 (first 16 hex digits) of its
patient ids, which anyone holding the data can recompute; the two lists share no entry.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Sequence

from factory.data.dataset import Study, StudyDataset
from factory.errors import BadInputError

if TYPE_CHECKING:
    from factory.config import ReportsDataConfig, TrainDataConfig

IMAGES, REPORTS = "images", "reports"
SIDES = (IMAGES, REPORTS)
REPORT_LAYOUTS = ("mimic-cxr", "iu-xray", "folder")


def side_of(patient: str, seed: int) -> str:
    """The side a patient found in both sources goes to: a coin of (seed, patient id)."""
    digest = hashlib.sha256(f"{seed}\0{patient}".encode()).digest()
    return IMAGES if digest[0] & 1 == 0 else REPORTS


def patient_hash(patient: str) -> str:
    return hashlib.sha256(patient.encode()).hexdigest()[:16]


def has_reports(data: TrainDataConfig) -> bool:
    """Whether `data` (a chest X-ray source) can give the report side."""
    return data.reports is not None or data.source == "phantom-cxr" or data.layout in REPORT_LAYOUTS


def _open_source(source: str, path: str | None, layout: str | None, count: int, seed: int, size: int,
                 skip_bad: bool) -> StudyDataset:
    if source == "phantom-cxr":
        from factory.data.phantoms.dataset import PhantomCxrDataset

        return PhantomCxrDataset(count, size=size, seed=seed)
    from factory.data.adapters import open_dataset

    return open_dataset(path, layout, size=size, skip_bad=skip_bad)


def _image_source(data: TrainDataConfig) -> StudyDataset:
    return _open_source(data.source, data.path, data.layout, data.count, data.seed, data.size, data.skip_bad)


def _report_source(data: TrainDataConfig) -> StudyDataset:
    reports: ReportsDataConfig | None = data.reports
    if reports is None:
        return _image_source(data)
    return _open_source(reports.source, reports.path, reports.layout, reports.count, reports.seed, data.size,
                        data.skip_bad)


def _patients(dataset: StudyDataset) -> list[str]:
    return [dataset.patient_id(i) for i in range(len(dataset))]


def split_indices(image_patients: Sequence[str], report_patients: Sequence[str],
                  seed: int) -> tuple[list[int], list[int]]:
    """The studies each side keeps (indices into its source), from each source's patient per study."""
    shared = set(image_patients) & set(report_patients)
    images = [i for i, p in enumerate(image_patients) if p not in shared or side_of(p, seed) == IMAGES]
    reports = [i for i, p in enumerate(report_patients) if p not in shared or side_of(p, seed) == REPORTS]
    return images, reports


class UnpairedSide(StudyDataset):
    """One side of the split: the kept studies of its source, images without reports or reports
    without images."""

    def __init__(self, source: StudyDataset, indices: Sequence[int], side: str):
        super().__init__(skip_bad=source.skip_bad)
        self.source, self.indices, self.side = source, list(indices), side
        self.label_names = source.label_names
        self.skipped = source.skipped

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> Study:
        position = self.indices[index]
        images = self.side == IMAGES
        study = self.source.load(position, image=images, report=not images)
        if not images and study.report is None:
            raise BadInputError(f"study {study.study_id}", "the report side needs a report; this study has none")
        return Study(study_id=study.study_id, image=study.image, labels=study.labels, report=study.report,
                     meta={"patient_id": self.source.patient_id(position)})


def open_side(data: TrainDataConfig, side: str) -> UnpairedSide:
    """The studies of one side of `data`'s unpaired split (both sources are indexed to split them);
    factory.data.training.open_part checks first that `data` gives that side."""
    if side not in SIDES:
        raise ValueError(f"unknown side {side!r}; sides: {list(SIDES)}")
    images, reports = _image_source(data), _report_source(data)
    kept = split_indices(_patients(images), _patients(reports), data.seed)
    return UnpairedSide(images, kept[0], IMAGES) if side == IMAGES else UnpairedSide(reports, kept[1], REPORTS)


def split_record(image_patients: Sequence[str], report_patients: Sequence[str],
                 image_studies: Sequence[str], report_studies: Sequence[str]) -> dict[str, Any]:
    """What proves the two sides unpaired: per side the study and patient counts and the sorted
    hashes of its patient ids. Raises BadInputError when a patient is on both sides."""
    shared = set(image_patients) & set(report_patients)
    if shared:
        raise BadInputError("training data", f"{len(shared)} patients are on both sides of the unpaired split "
                                             f"(e.g. {sorted(shared)[:3]}); rebuild the run's data caches")
    record: dict[str, Any] = {"hash": "sha256(patient id)[:16]", "shared_patients": 0}
    for side, patients, studies in ((IMAGES, image_patients, image_studies),
                                    (REPORTS, report_patients, report_studies)):
        record[side] = {"studies": len(studies), "patients": len(set(patients)),
                        "patient_hashes": sorted({patient_hash(p) for p in patients})}
    return record
