"""One interface for every training dataset, real or phantom.

A dataset yields `Study` records: an image tensor, an optional report, a label vector over the
dataset's `label_names`, and a study id. Adapters for real layouts and the phantom simulators'
outputs both load through this interface, so recipes never see a file format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from factory.errors import BadInputError

# Label values follow CheXpert: 1 present, 0 absent, -1 uncertain, NaN not mentioned.
POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0


def no_image() -> torch.Tensor:
    """The image of a study loaded without one (a report-only study of unpaired training data): one
    zero pixel, so that a cache of such studies keeps its fixed image shape at no cost."""
    return torch.zeros(1, 1, 1)


@dataclass
class Study:
    study_id: str
    image: torch.Tensor  # float32, channels first (C, H, W) or (C, D, H, W) for volumes
    labels: torch.Tensor  # float32 vector aligned with the dataset's label_names
    report: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class StudyDataset(torch.utils.data.Dataset):
    """Base class: subclasses index their studies in `__init__` and decode one in `load`.

    With `skip_bad=True` a study that cannot be decoded is skipped (and counted in `skipped`)
    instead of raising; `__getitem__` then moves on to the next readable study.
    """

    label_names: Sequence[str] = ()

    def __init__(self, skip_bad: bool = False):
        self.skip_bad = skip_bad
        self.skipped: dict[str, str] = {}  # source -> problem

    def __len__(self) -> int:  # pragma: no cover - subclasses define it
        raise NotImplementedError

    def load(self, index: int) -> Study:  # pragma: no cover - subclasses define it
        raise NotImplementedError

    def __getitem__(self, index: int) -> Study:
        if not self.skip_bad:
            return self.load(index)
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            try:
                return self.load(i)
            except BadInputError as err:
                self.skipped[err.source] = err.problem
        raise BadInputError("dataset", "no readable study left after skipping bad ones")

    def label_vector(self, values: dict[str, float]) -> torch.Tensor:
        vec = np.full(len(self.label_names), np.nan, dtype=np.float32)
        for i, name in enumerate(self.label_names):
            if name in values:
                vec[i] = values[name]
        return torch.from_numpy(vec)
