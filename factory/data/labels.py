"""Label vocabulary shared by the chest X-ray phantom, its reports, the labeler and the adapters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CXR_LABELS: tuple[str, ...] = (
    "No Finding",
    "Cardiomegaly",
    "Pleural Effusion",
    "Pneumothorax",
    "Consolidation/Pneumonia",
    "Edema",
    "Nodule/Mass",
    "Atelectasis",
    "Support Devices",
)

Laterality = Literal["left", "right", "bilateral"]


@dataclass(frozen=True)
class Finding:
    """One finding present in a study: what the image draws and the report describes."""

    name: str  # one of CXR_LABELS other than "No Finding"
    severity: float  # 0 (subtle) .. 1 (florid)
    laterality: Laterality | None = None
    kind: str | None = None  # e.g. "lobar"/"patchy", "nodule"/"mass", "PICC"/"ET tube"
