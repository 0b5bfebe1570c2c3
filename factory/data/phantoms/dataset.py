"""The chest X-ray phantom as a StudyDataset, generated on demand: training data without files."""

from __future__ import annotations

from typing import Mapping

import torch

from factory.data.dataset import Study, StudyDataset, no_image
from factory.data.labels import CXR_LABELS


class PhantomCxrDataset(StudyDataset):
    label_names = CXR_LABELS

    def __init__(self, count: int, size: int = 128, seed: int = 0, prevalence: Mapping[str, float] | None = None):
        super().__init__()
        self.count, self.size, self.seed, self.prevalence = count, size, seed, prevalence

    def __len__(self) -> int:
        return self.count

    def patient_id(self, index: int) -> str:
        """Every phantom study is a patient of its own (its id, which names the seed and index)."""
        from factory.data.phantoms.cxr import study_id

        return study_id(self.seed, index)

    def load(self, index: int, image: bool = True, report: bool = True) -> Study:
        """Study `index`; `image=False` draws no film (factory.data.dataset.no_image in its place),
        `report=False` gives no report: the two sides of unpaired training data."""
        from factory.data.phantoms.cxr import generate_study, study_findings

        if not 0 <= index < self.count:
            raise IndexError(index)
        if image:
            study = generate_study(self.seed, index, size=self.size, prevalence=self.prevalence)
            pixels = torch.from_numpy(study.image).float().div_(255.0)[None]
            labels, text = study.labels, study.report
        else:
            labels, text = study_findings(self.seed, index, self.prevalence)
            pixels = no_image()
        return Study(study_id=self.patient_id(index), image=pixels, labels=torch.from_numpy(labels.astype("float32")),
                     report=text if report else None,
                     meta={"source": "phantom-cxr", "seed": self.seed, "patient_id": self.patient_id(index)})
