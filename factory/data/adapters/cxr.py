"""Adapters for chest X-ray datasets: MIMIC-CXR-JPG, IU X-ray (OpenI), CheXpert, NIH ChestX-ray14 and a
generic image folder + CSV. Every adapter yields `Study(image (1, H, W) float32 in [0, 1], labels over
CXR_LABELS with CheXpert values, report or None, study_id)`. Roots may be local paths or fsspec URLs.

Folder trees (the phantom writes the same ones, see factory/data/layouts.py):

mimic-cxr   ROOT/mimic-cxr-2.0.0-chexpert.csv          subject_id, study_id, the 14 CheXpert labels
            ROOT/files/p10/p10000032/s50414267/*.jpg    one study per image (dicom_id.jpg)
            ROOT/files/p10/p10000032/s50414267.txt      the report (required)
iu-xray     ROOT/NLMCXR_reports/ecgen-radiology/*.xml   FINDINGS/IMPRESSION (one required), MeSH terms,
            ROOT/NLMCXR_png/<parentImage id>.png        one study per parentImage of each report
chexpert    ROOT/train.csv (and/or valid.csv)           Path, Sex, Age, Frontal/Lateral, AP/PA, 14 labels
            ROOT/train/patient00001/study1/view1_frontal.jpg   (Path's leading CheXpert-v1.0-* is ROOT)
nih         ROOT/Data_Entry_2017.csv                    Image Index, Finding Labels ("A|B" or "No Finding"), ...
            ROOT/**/00000001_000.png                    found anywhere below ROOT (images/, images_001/images/)
folder      ROOT/labels.csv                             path (relative to ROOT), optional study_id, patient_id,
            ROOT/<path>                                 report, and any of the CXR_LABELS columns (1, 0, -1, blank)

Patients (`patient_id(index)`, which unpaired training splits by): MIMIC-CXR's p<subject> folder,
CheXpert's patientNNNNN folder, NIH's image-name prefix (nih-<patient>), IU X-ray's report file
(iu-<report>: one report per patient study), the folder layout's patient_id column; a study without
one is its own patient.

Label mapping to CXR_LABELS:
- CheXpert/MIMIC: Consolidation and Pneumonia -> Consolidation/Pneumonia (1 if either is 1, else -1 if
  either is -1, else 0 if either is 0); Lung Lesion -> Nodule/Mass; Enlarged Cardiomediastinum,
  Lung Opacity, Pleural Other and Fracture have no counterpart and are read but dropped.
- NIH: Effusion -> Pleural Effusion; Pneumonia, Consolidation -> Consolidation/Pneumonia;
  Nodule, Mass -> Nodule/Mass; Atelectasis, Cardiomegaly, Pneumothorax, Edema as named; a study lists
  every finding it has, so unlisted mapped labels are 0; Support Devices is NaN (not labelled);
  Infiltration, Emphysema, Fibrosis, Pleural_Thickening and Hernia are dropped.
- IU X-ray: MeSH major headings (text before the first "/"): normal -> No Finding; Cardiomegaly;
  Pleural Effusion; Pneumothorax; Pneumonia, Consolidation -> Consolidation/Pneumonia; Pulmonary Edema,
  Edema -> Edema; Nodule, Mass, Lung Neoplasms -> Nodule/Mass; Pulmonary Atelectasis, Atelectasis;
  Medical Device, Catheters Indwelling, Tube Inserted, Implanted Medical Device, Pacemaker Artificial
  -> Support Devices. Other headings are dropped; mapped labels not listed are 0.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import posixpath
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, UnidentifiedImageError

from factory import storage
from factory.data.dataset import Study, StudyDataset, no_image
from factory.data.labels import CXR_LABELS
from factory.errors import BadInputError

MIMIC_COLUMNS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                 "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                 "Pneumothorax", "Support Devices")
CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
                    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
# The real header has unquoted commas inside brackets, so a CSV reader splits those two columns.
NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
               "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]

# Our label -> the CheXpert columns it is made of.
_CHEXPERT_SOURCES = {
    "No Finding": ("No Finding",), "Cardiomegaly": ("Cardiomegaly",), "Pleural Effusion": ("Pleural Effusion",),
    "Pneumothorax": ("Pneumothorax",), "Consolidation/Pneumonia": ("Consolidation", "Pneumonia"),
    "Edema": ("Edema",), "Nodule/Mass": ("Lung Lesion",), "Atelectasis": ("Atelectasis",),
    "Support Devices": ("Support Devices",),
}
_NIH_MAP = {"Effusion": "Pleural Effusion", "Pneumonia": "Consolidation/Pneumonia",
            "Consolidation": "Consolidation/Pneumonia", "Nodule": "Nodule/Mass", "Mass": "Nodule/Mass",
            "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Pneumothorax": "Pneumothorax",
            "Edema": "Edema"}
_NIH_DROPPED = {"Infiltration", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"}
_MESH_MAP = {"normal": "No Finding", "cardiomegaly": "Cardiomegaly", "pleural effusion": "Pleural Effusion",
             "pneumothorax": "Pneumothorax", "pneumonia": "Consolidation/Pneumonia",
             "consolidation": "Consolidation/Pneumonia", "pulmonary edema": "Edema", "edema": "Edema",
             "nodule": "Nodule/Mass", "mass": "Nodule/Mass", "lung neoplasms": "Nodule/Mass",
             "pulmonary atelectasis": "Atelectasis", "atelectasis": "Atelectasis",
             "medical device": "Support Devices", "catheters, indwelling": "Support Devices",
             "tube, inserted": "Support Devices", "implanted medical device": "Support Devices",
             "pacemaker, artificial": "Support Devices"}


def to_chexpert_columns(labels: np.ndarray, columns: Sequence[str]) -> list[float]:
    """Our label vector written as CheXpert columns (unmapped columns NaN)."""
    by_column = {}
    for name, sources in _CHEXPERT_SOURCES.items():
        for column in sources:
            by_column[column] = float(labels[CXR_LABELS.index(name)])
    return [by_column.get(column, math.nan) for column in columns]


def _combine(values: Sequence[float]) -> float:
    """CheXpert columns merged into one label: positive beats uncertain beats negative beats blank."""
    for wanted in (1.0, -1.0, 0.0):
        if wanted in values:
            return wanted
    return math.nan


def _parse_value(text: str, source: str) -> float:
    text = text.strip()
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise BadInputError(source, f"label value {text!r} is not 1, 0, -1 or blank") from None
    if value not in (1.0, 0.0, -1.0):
        raise BadInputError(source, f"label value {text!r} is not 1, 0, -1 or blank")
    return value


def from_chexpert_row(row: dict[str, str], source: str) -> dict[str, float]:
    values = {}
    for name, sources in _CHEXPERT_SOURCES.items():
        values[name] = _combine([_parse_value(row.get(column, ""), source) for column in sources])
    return values


def decode_image(data: bytes, source: str, size: int | tuple[int, int] | None) -> torch.Tensor:
    """PNG/JPEG bytes -> (1, H, W) float32 in [0, 1]; 16-bit scaled by 65535; resized when asked."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img, dtype=np.float32) / 65535.0
            else:
                array = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadInputError(source, f"unreadable image ({err})") from err
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None]
    if size is not None:
        shape = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(tensor.shape[1:]) != shape:
            tensor = F.interpolate(tensor[None], size=shape, mode="bilinear", antialias=True, align_corners=False)[0]
            tensor = tensor.clamp_(0.0, 1.0)
    return tensor


@dataclass
class _Record:
    study_id: str
    image: str  # path inside the filesystem
    labels: dict[str, float]
    report: str | None = None  # report text already read (XML, CSV)
    report_file: str | None = None  # or a file to read it from at load time
    report_source: str | None = None  # where a missing report should be blamed
    patient: str | None = None  # the layout's patient id; None: the study is its own patient


class CxrDataset(StudyDataset):
    """Indexed records of one layout; images (and report files) are read in `load`."""

    label_names = CXR_LABELS

    def __init__(self, root: str, size: int | tuple[int, int] | None = None, skip_bad: bool = False,
                 storage_options: storage.StorageOptions = None):
        super().__init__(skip_bad)
        self.root_url = root
        self.size = size
        self.fs, self.root = storage.filesystem(root, storage_options)
        self.root = self.root.rstrip("/")
        self.records: list[_Record] = []

    def url(self, path: str) -> str:
        """A path inside the filesystem as the user would write it (for messages)."""
        return path if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(path)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def read(self, path: str) -> bytes:
        try:
            return self.fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError) as err:
            raise BadInputError(self.url(path), "not found") from err

    def problem(self, source: str, problem: str) -> None:
        """An indexing problem: raise it, or with skip_bad count it and carry on."""
        if not self.skip_bad:
            raise BadInputError(self.url(source), problem)
        self.skipped[self.url(source)] = problem

    def read_table(self, path: str, allowed: Sequence[str], required: Sequence[str]) -> list[dict[str, str]]:
        text = self.read(path).decode("utf-8-sig", errors="replace")
        reader = csv.DictReader(io.StringIO(text))
        header = [h for h in (reader.fieldnames or []) if h != ""]
        missing = [c for c in required if c not in header]
        if missing:
            raise BadInputError(self.url(path), f"missing columns {missing}")
        unknown = [c for c in header if c not in allowed]
        if unknown:
            self.problem(path, f"unknown columns {unknown} (expected some of {list(allowed)})")
        return list(reader)

    def __len__(self) -> int:
        return len(self.records)

    def index_sha256(self) -> str:
        """sha256 of the indexed studies (ids and image files, in order): what a run over this dataset
        was planned on. The images' bytes are not read."""
        index = [[record.study_id, self.url(record.image)] for record in self.records]
        return hashlib.sha256(json.dumps(index, separators=(",", ":")).encode()).hexdigest()

    def patient_id(self, index: int) -> str:
        """The patient of study `index`, from the index alone (nothing decoded): the layout's own
        patient id where it has one (module docstring), else the study id."""
        record = self.records[index]
        return record.patient or record.study_id

    def load(self, index: int, image: bool = True, report: bool = True) -> Study:
        """Study `index`; `image=False` decodes no image (factory.data.dataset.no_image in its place),
        `report=False` reads no report (None): the two sides of unpaired training data."""
        record = self.records[index]
        text = record.report if report else None
        if report and record.report_file is not None:
            text = self.read(record.report_file).decode("utf-8", errors="replace")
            text = _report_sections(text)
            if not text:
                raise BadInputError(self.url(record.report_file), "empty report")
        pixels = decode_image(self.read(record.image), self.url(record.image), self.size) if image else no_image()
        return Study(study_id=record.study_id, image=pixels, labels=self.label_vector(record.labels), report=text,
                     meta={"image": self.url(record.image), "patient_id": self.patient_id(index)})


def _report_sections(text: str) -> str:
    """The FINDINGS/IMPRESSION part of a free-text report (what report generators learn), else all of it."""
    upper = text.upper()
    starts = [i for i in (upper.find("FINDINGS:"), upper.find("IMPRESSION:")) if i >= 0]
    return " ".join(text[min(starts):].split()) if starts else " ".join(text.split())


class MimicCxr(CxrDataset):
    def __init__(self, root, size=None, skip_bad=False, storage_options=None):
        super().__init__(root, size, skip_bad, storage_options)
        table = self.path("mimic-cxr-2.0.0-chexpert.csv")
        rows = self.read_table(table, ["subject_id", "study_id", *MIMIC_COLUMNS], ["study_id"])
        labels = {}
        for row in rows:
            try:
                labels[f"s{int(float(row['study_id']))}"] = from_chexpert_row(row, self.url(table))
            except (BadInputError, ValueError) as err:
                self.problem(table, f"row for study {row.get('study_id')!r}: {err}")
        for image in sorted(self.fs.find(self.path("files"))):
            if not image.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            study_dir = posixpath.dirname(image)
            study = posixpath.basename(study_dir)
            self.records.append(_Record(study_id=study, image=image, labels=labels.get(study, {}),
                                        report_file=f"{study_dir}.txt",
                                        patient=posixpath.basename(posixpath.dirname(study_dir))))


class IuXray(CxrDataset):
    def __init__(self, root, size=None, skip_bad=False, storage_options=None):
        super().__init__(root, size, skip_bad, storage_options)
        reports = sorted(p for p in self.fs.find(self.path("NLMCXR_reports")) if p.endswith(".xml"))
        for xml_path in reports:
            try:
                tree = ET.fromstring(self.read(xml_path))
            except ET.ParseError as err:
                self.problem(xml_path, f"unreadable XML ({err})")
                continue
            sections = {el.get("Label", "").upper(): (el.text or "").strip() for el in tree.iter("AbstractText")}
            findings, impression = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
            if not (findings or impression):
                self.problem(xml_path, "no report: FINDINGS and IMPRESSION are both empty")
                continue
            report = " ".join(p for p in (f"FINDINGS: {findings}" if findings else "",
                                          f"IMPRESSION: {impression}" if impression else "") if p)
            labels = self._mesh_labels([(el.text or "") for el in tree.iter("major")])
            patient = "iu-" + posixpath.splitext(posixpath.basename(xml_path))[0]  # one report per patient
            for image in tree.iter("parentImage"):
                image_id = image.get("id", "")
                self.records.append(_Record(study_id=image_id, image=self.path("NLMCXR_png", f"{image_id}.png"),
                                            labels=labels, report=report, patient=patient))

    @staticmethod
    def _mesh_labels(terms: list[str]) -> dict[str, float]:
        if not terms:
            return {}
        labels = {name: 0.0 for name in CXR_LABELS}
        for term in terms:
            name = _MESH_MAP.get(term.split("/")[0].strip().lower())
            if name:
                labels[name] = 1.0
        return labels


class Chexpert(CxrDataset):
    def __init__(self, root, size=None, skip_bad=False, storage_options=None, splits=("train", "valid")):
        super().__init__(root, size, skip_bad, storage_options)
        tables = [self.path(f"{split}.csv") for split in splits if self.fs.exists(self.path(f"{split}.csv"))]
        if not tables:
            raise BadInputError(self.url(self.path("train.csv")), "not found (nor any of "
                                f"{[s + '.csv' for s in splits]})")
        for table in tables:
            for row in self.read_table(table, CHEXPERT_COLUMNS, ["Path"]):
                # Paths start with the dataset folder's own name (CheXpert-v1.0-small/train/...).
                rel = row["Path"].split("/", 1)[1] if row["Path"].startswith("CheXpert") else row["Path"]
                try:
                    labels = from_chexpert_row(row, self.url(table))
                except BadInputError as err:
                    self.problem(table, f"row {row['Path']!r}: {err.problem}")
                    continue
                study_id = posixpath.dirname(rel).replace("/", "-")
                folders = rel.split("/")  # train/patient00001/study1/view1_frontal.jpg
                self.records.append(_Record(study_id=f"{study_id}-{posixpath.basename(rel).split('.')[0]}",
                                            image=self.path(rel), labels=labels,
                                            patient=folders[-3] if len(folders) >= 3 else None))


class Nih(CxrDataset):
    def __init__(self, root, size=None, skip_bad=False, storage_options=None):
        super().__init__(root, size, skip_bad, storage_options)
        table = self.path("Data_Entry_2017.csv")
        rows = self.read_table(table, NIH_COLUMNS, ["Image Index", "Finding Labels"])
        images = {posixpath.basename(p): p for p in self.fs.find(self.root) if p.lower().endswith(".png")}
        for row in rows:
            name = row["Image Index"].strip()
            findings = [f.strip() for f in row["Finding Labels"].split("|") if f.strip()]
            unknown = [f for f in findings if f not in _NIH_MAP and f not in _NIH_DROPPED and f != "No Finding"]
            if unknown:
                self.problem(table, f"row {name!r}: unknown finding labels {unknown}")
                continue
            labels = {n: 0.0 for n in CXR_LABELS if n != "Support Devices"}
            labels["No Finding"] = 1.0 if findings == ["No Finding"] else 0.0
            for f in findings:
                if f in _NIH_MAP:
                    labels[_NIH_MAP[f]] = 1.0
            self.records.append(_Record(study_id=name.rsplit(".", 1)[0],
                                        image=images.get(name, self.path("images", name)), labels=labels,
                                        patient="nih-" + name.split("_")[0]))  # <patient>_<follow-up>.png


class ImageFolder(CxrDataset):
    def __init__(self, root, size=None, skip_bad=False, storage_options=None, table="labels.csv"):
        super().__init__(root, size, skip_bad, storage_options)
        table_path = self.path(table)
        rows = self.read_table(table_path, ["study_id", "patient_id", "path", "report", *CXR_LABELS], ["path"])
        has_report = bool(rows) and "report" in rows[0]
        for number, row in enumerate(rows, start=2):  # line 1 is the header
            try:
                labels = {n: _parse_value(row[n], self.url(table_path)) for n in CXR_LABELS if n in row}
            except BadInputError as err:
                self.problem(table_path, f"line {number}: {err.problem}")
                continue
            if has_report and not (row.get("report") or "").strip():
                self.problem(table_path, f"line {number}: no report for {row['path']!r}")
                continue
            study_id = row.get("study_id") or posixpath.splitext(posixpath.basename(row["path"]))[0]
            self.records.append(_Record(study_id=study_id, image=self.path(row["path"]), labels=labels,
                                        report=row["report"].strip() if has_report else None,
                                        patient=(row.get("patient_id") or "").strip() or None))


ADAPTERS = {"mimic-cxr": MimicCxr, "iu-xray": IuXray, "chexpert": Chexpert, "nih": Nih, "folder": ImageFolder}
