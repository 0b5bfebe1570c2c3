"""Writing chest X-ray studies in the folder layouts of real datasets, so adapters load phantoms and
real data through the same code. Each layout's tree is described in factory/data/adapters/cxr.py.

Label tables are appended row by row and flushed, so an interrupted run keeps what it wrote.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import xml.etree.ElementTree as ET
from typing import Iterator, Protocol

import numpy as np
from PIL import Image

from factory.data.adapters.cxr import CHEXPERT_COLUMNS, MIMIC_COLUMNS, NIH_COLUMNS, to_chexpert_columns
from factory.data.labels import CXR_LABELS


class StudyLike(Protocol):
    study_id: str
    image: np.ndarray
    findings: list
    labels: np.ndarray
    report: str
    index: int


def _save_image(path: str, image: np.ndarray, fmt: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buffer = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(image).save(buffer, "JPEG", quality=95)
    else:
        Image.fromarray(image).save(buffer, "PNG")
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


def _cell(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.1f}"


class _CsvLog:
    """A CSV opened once, one flushed row per study."""

    def __init__(self, path: str, header: list[str]):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.file = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow(header)

    def row(self, values: list) -> None:
        self.writer.writerow(values)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class MimicWriter:
    """files/pXX/p<subject>/s<study>/<dicom_id>.jpg, files/pXX/p<subject>/s<study>.txt, chexpert CSV."""

    def __init__(self, out: str):
        self.out = out
        self.csv = _CsvLog(os.path.join(out, "mimic-cxr-2.0.0-chexpert.csv"), ["subject_id", "study_id", *MIMIC_COLUMNS])

    def add(self, study: StudyLike) -> None:
        subject, sid = 10000000 + study.index, 50000000 + study.index
        folder = os.path.join(self.out, "files", f"p{str(subject)[:2]}", f"p{subject}")
        digest = hashlib.sha1(study.study_id.encode()).hexdigest()  # MIMIC dicom_ids look like this
        dicom_id = "-".join(digest[i:i + 8] for i in range(0, 40, 8))
        _save_image(os.path.join(folder, f"s{sid}", f"{dicom_id}.jpg"), study.image, "JPEG")
        with open(os.path.join(folder, f"s{sid}.txt"), "w", encoding="utf-8") as f:
            f.write(f"                                 FINAL REPORT\n EXAMINATION:  CHEST (PA)\n\n {study.report}\n")
        values = to_chexpert_columns(study.labels, MIMIC_COLUMNS)
        self.csv.row([subject, sid, *(_cell(v) for v in values)])

    def close(self) -> None:
        self.csv.close()


class ChexpertWriter:
    """train.csv with Path = CheXpert-v1.0-small/train/patientNNNNN/study1/view1_frontal.jpg."""

    def __init__(self, out: str):
        self.out = out
        self.csv = _CsvLog(os.path.join(out, "train.csv"), CHEXPERT_COLUMNS)

    def add(self, study: StudyLike) -> None:
        rel = f"train/patient{study.index + 1:05d}/study1/view1_frontal.jpg"
        _save_image(os.path.join(self.out, rel), study.image, "JPEG")
        values = to_chexpert_columns(study.labels, CHEXPERT_COLUMNS[5:])
        self.csv.row([f"CheXpert-v1.0-small/{rel}", "Unknown", "", "Frontal", "PA", *(_cell(v) for v in values)])

    def close(self) -> None:
        self.csv.close()


# NIH ChestX-ray14 names for the phantom's findings (Support Devices has no NIH label).
_NIH_NAME = {"Cardiomegaly": "Cardiomegaly", "Pleural Effusion": "Effusion", "Pneumothorax": "Pneumothorax",
             "Edema": "Edema", "Atelectasis": "Atelectasis"}


class NihWriter:
    """images/<patient:08d>_000.png and Data_Entry_2017.csv (labels only: NIH has no reports)."""

    def __init__(self, out: str):
        self.out = out
        self.csv = _CsvLog(os.path.join(out, "Data_Entry_2017.csv"), NIH_COLUMNS)

    def add(self, study: StudyLike) -> None:
        name = f"{study.index + 1:08d}_000.png"
        _save_image(os.path.join(self.out, "images", name), study.image, "PNG")
        names = []
        for f in study.findings:
            if f.name == "Consolidation/Pneumonia":
                names.append("Consolidation" if f.kind == "lobar" else "Pneumonia")
            elif f.name == "Nodule/Mass":
                names.append("Mass" if f.kind == "mass" else "Nodule")
            elif f.name in _NIH_NAME:
                names.append(_NIH_NAME[f.name])
        h, w = study.image.shape
        self.csv.row([name, "|".join(names) or "No Finding", 0, study.index + 1, "", "", "PA", w, h, 0.143, 0.143])

    def close(self) -> None:
        self.csv.close()


# IU X-ray MeSH "major" headings for the phantom's findings.
_MESH = {"Cardiomegaly": "Cardiomegaly", "Pleural Effusion": "Pleural Effusion", "Pneumothorax": "Pneumothorax",
         "Consolidation/Pneumonia": "Pneumonia", "Edema": "Pulmonary Edema", "Nodule/Mass": "Nodule",
         "Atelectasis": "Pulmonary Atelectasis", "Support Devices": "Medical Device"}


def _severity_word(severity: float) -> str:
    return "mild" if severity < 0.35 else ("moderate" if severity < 0.7 else "severe")


def _split_report(report: str) -> tuple[str, str]:
    findings, _, impression = report.partition("IMPRESSION:")
    return findings.replace("FINDINGS:", "").strip(), impression.strip()


class IuXrayWriter:
    """NLMCXR_png/CXR<n>_1_IM-<n>-1001.png and NLMCXR_reports/ecgen-radiology/<n>.xml (OpenI)."""

    def __init__(self, out: str):
        self.out = out

    def add(self, study: StudyLike) -> None:
        n = study.index + 1
        image_id = f"CXR{n}_1_IM-{n:04d}-1001"
        _save_image(os.path.join(self.out, "NLMCXR_png", f"{image_id}.png"), study.image, "PNG")
        root = ET.Element("eCitation")
        abstract = ET.SubElement(ET.SubElement(ET.SubElement(root, "MedlineCitation"), "Article"), "Abstract")
        findings, impression = _split_report(study.report)
        for label, text in (("COMPARISON", "None."), ("INDICATION", "Phantom study."),
                            ("FINDINGS", findings), ("IMPRESSION", impression)):
            ET.SubElement(abstract, "AbstractText", Label=label).text = text
        mesh = ET.SubElement(root, "MeSH")
        for f in study.findings:
            parts = [_MESH[f.name], *([f.laterality] if f.laterality else []), _severity_word(f.severity)]
            ET.SubElement(mesh, "major").text = "/".join(parts)
        if all(f.name == "Support Devices" for f in study.findings):  # CheXpert's rule: devices are not disease
            ET.SubElement(mesh, "major").text = "normal"
        ET.SubElement(ET.SubElement(root, "parentImage", id=image_id), "url").text = f"/hadoop/storage/radiology/extract/{image_id}.jpg"
        path = os.path.join(self.out, "NLMCXR_reports", "ecgen-radiology", f"{n}.xml")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)

    def close(self) -> None:
        pass


class FolderWriter:
    """images/<study_id>.png and labels.csv (study_id, path, report, one column per CXR label)."""

    def __init__(self, out: str):
        self.out = out
        self.csv = _CsvLog(os.path.join(out, "labels.csv"), ["study_id", "path", "report", *CXR_LABELS])

    def add(self, study: StudyLike) -> None:
        rel = f"images/{study.study_id}.png"
        _save_image(os.path.join(self.out, rel), study.image, "PNG")
        self.csv.row([study.study_id, rel, study.report, *(_cell(v) for v in study.labels)])

    def close(self) -> None:
        self.csv.close()


WRITERS = {"mimic-cxr": MimicWriter, "iu-xray": IuXrayWriter, "chexpert": ChexpertWriter, "nih": NihWriter,
           "folder": FolderWriter}


@contextlib.contextmanager
def layout_writer(layout: str, out: str) -> Iterator[MimicWriter | IuXrayWriter | ChexpertWriter | NihWriter | FolderWriter]:
    if layout not in WRITERS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(WRITERS)}")
    writer = WRITERS[layout](out)
    try:
        yield writer
    finally:
        writer.close()
