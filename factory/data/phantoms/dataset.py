"""The chest X-ray phantom as a StudyDataset, generated on demand: training data without files."""

from __future__ import annotations

from typing import Mapping

import torch

from factory.data.dataset import Study, StudyDataset
from factory.data.labels import CXR_LABELS


class PhantomCxrDataset(StudyDataset):
    label_names = CXR_LABELS

    def __init__(self, count: int, size: int = 128, seed: int = 0, prevalence: Mapping[str, float] | None = None):
        super().__init__()
        self.count, self.size, self.seed, self.prevalence = count, size, seed, prevalence

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> Study:
        from factory.data.phantoms.cxr import generate_study

        if not 0 <= index < self.count:
            raise IndexError(index)
        study = generate_study(self.seed, index, size=self.size, prevalence=self.prevalence)
        image = torch.from_numpy(study.image).float().div_(255.0)[None]
        return Study(study_id=study.study_id, image=image, labels=torch.from_numpy(study.labels.astype("float32")),
                     report=study.report, meta={"source": "phantom-cxr", "seed": self.seed})
