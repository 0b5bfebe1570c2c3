"""Chest X-ray phantom: procedurally drawn frontal radiographs with findings, labels and reports.

Study n of a dataset depends only on (seed, n), through independent streams seeded by
[seed, n, k]: k=0 which findings, 1 the patient's anatomy and positioning, 2 the report wording,
3 how the findings are drawn, 4 the film noise. So any study can be regenerated alone, and the same
patient can be rendered with and without a finding (a counterfactual pair) that differ only there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
from tqdm import tqdm

from factory.data.labels import CXR_LABELS, Finding
from factory.data.phantoms.cxr_anatomy import draw_anatomy, expose, sample_chest
from factory.data.phantoms.cxr_canvas import Canvas
from factory.data.phantoms.cxr_findings import (DEFAULT_PREVALENCE, adjust_chest, draw_findings, resolve_prevalence,
                                                 sample_findings)
from factory.data.text.reports import write_report

MAX_SIZE = 1024


@dataclass
class CxrStudy:
    study_id: str
    image: np.ndarray  # uint8 (size, size), bright = attenuating, patient's right on the image left
    findings: list[Finding]
    labels: np.ndarray  # float32 over CXR_LABELS, 1 present / 0 absent
    report: str
    seed: int
    index: int


def labels_of(findings: list[Finding]) -> np.ndarray:
    """Label vector by CheXpert's rule, as the labeler reads reports: support devices alone still
    leave a study at No Finding."""
    from factory.data.text.labeler import finding_labels

    return np.array(list(finding_labels(findings).values()), dtype=np.float32)


def render(seed: int, index: int, findings: list[Finding], size: int = 128) -> np.ndarray:
    """The film of study (seed, index) showing `findings`."""
    if not 16 <= size <= MAX_SIZE:
        raise ValueError(f"size must lie in [16, {MAX_SIZE}], got {size}")
    rng = np.random.default_rng([seed, index, 1])
    chest = sample_chest(rng)
    adjust_chest(chest, findings)
    canvas = Canvas(size, angle=math.radians(rng.uniform(-4, 4)), shift=tuple(rng.normal(0, 0.025, 2)))
    masks = draw_anatomy(canvas, chest, rng)
    draw_findings(canvas, chest, masks, findings, np.random.default_rng([seed, index, 3]))
    canvas.density += masks.markings
    return expose(canvas, chest, np.random.default_rng([seed, index, 4]))


def study_id(seed: int, index: int) -> str:
    return f"cxr-{seed}-{index:08d}"


def generate_study(seed: int, index: int, size: int = 128, prevalence: Mapping[str, float] | None = None) -> CxrStudy:
    findings = sample_findings(np.random.default_rng([seed, index, 0]), resolve_prevalence(prevalence))
    return CxrStudy(
        study_id=study_id(seed, index),
        image=render(seed, index, findings, size),
        findings=findings,
        labels=labels_of(findings),
        report=write_report(findings, np.random.default_rng([seed, index, 2])),
        seed=seed,
        index=index,
    )


def study_findings(seed: int, index: int, prevalence: Mapping[str, float] | None = None) -> tuple[np.ndarray, str]:
    """The labels and report of study (seed, index) without drawing its film: the same streams as
    `generate_study`'s, so they equal its labels and report."""
    findings = sample_findings(np.random.default_rng([seed, index, 0]), resolve_prevalence(prevalence))
    return labels_of(findings), write_report(findings, np.random.default_rng([seed, index, 2]))


def phantom_reports(seed: int, count: int) -> Iterator[str]:
    """The reports of studies 0..count-1 of a phantom dataset, without drawing their films (findings
    and wording are drawn from the same streams as `generate_study`'s)."""
    prevalence = resolve_prevalence(None)
    for index in range(count):
        findings = sample_findings(np.random.default_rng([seed, index, 0]), prevalence)
        yield write_report(findings, np.random.default_rng([seed, index, 2]))


def write_dataset(out: str, count: int, size: int = 128, layout: str = "mimic-cxr", seed: int = 0,
                  prevalence: Mapping[str, float] | None = None) -> None:
    """Write `count` phantom studies under `out` in the folder layout of the named real dataset."""
    from factory.data.layouts import layout_writer

    resolved = resolve_prevalence(prevalence)
    with layout_writer(layout, out) as writer:
        for index in tqdm(range(count), desc=f"cxr phantoms ({layout})", unit="study"):
            writer.add(generate_study(seed, index, size, resolved))


def phantom_arrays(seed: int, start: int, count: int, size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (count, 1, out_size, out_size) float32 and labels (count, 9), area-downsampled like a loader."""
    factor = size // out_size
    images = np.empty((count, 1, out_size, out_size), np.float32)
    labels = np.empty((count, len(CXR_LABELS)), np.float32)
    for i in tqdm(range(count), desc="phantoms", unit="study"):
        findings = sample_findings(np.random.default_rng([seed, start + i, 0]), DEFAULT_PREVALENCE)
        film = render(seed, start + i, findings, size).astype(np.float32) / 255.0
        images[i, 0] = film.reshape(out_size, factor, out_size, factor).mean(axis=(1, 3))
        labels[i] = labels_of(findings)
    return images, labels
