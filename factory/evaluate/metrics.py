"""Every evaluation metric under one import, plus the two regression metrics.

Image and label metrics (FID, KID, Inception-Score analogue, label fidelity, ROC-AUC) live in
image_metrics.py, report metrics (BLEU, CIDEr-D, ROUGE-L, labeler agreement, clinical efficacy) in text_metrics.py;
mean squared error and Pearson r (regression targets such as brain age) are defined here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from factory.errors import BadInputError
from factory.evaluate.image_metrics import (binary_auc, fid, inception_score, kid, label_fidelity,
                                            multilabel_auc, present)
from factory.evaluate.text_metrics import (bleu, cider, clinical_efficacy, labeler_agreement, normalise,
                                           report_metrics, rouge_l, stated_findings)

__all__ = ["binary_auc", "bleu", "cider", "clinical_efficacy", "fid", "inception_score", "kid", "label_fidelity", "labeler_agreement",
           "mean_squared_error", "multilabel_auc", "normalise", "pearson_r", "present", "report_metrics",
           "rouge_l", "stated_findings"]


def _regression_pair(predictions: Any, targets: Any, min_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    pred = np.asarray(predictions.detach().cpu() if isinstance(predictions, torch.Tensor) else predictions,
                      dtype=np.float64).reshape(-1)
    true = np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets,
                      dtype=np.float64).reshape(-1)
    if pred.shape != true.shape:
        raise BadInputError("predictions", f"{pred.size} predictions for {true.size} targets")
    if pred.size < min_len:
        raise BadInputError("predictions", f"need at least {min_len} values, got {pred.size}")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(true))):
        raise BadInputError("predictions", "contain NaN or infinite values")
    return torch.from_numpy(pred), torch.from_numpy(true)


def mean_squared_error(predictions: Any, targets: Any) -> float:
    """Mean of (prediction - target)^2 over all values (flattened)."""
    from torchmetrics.functional import mean_squared_error as mse

    pred, true = _regression_pair(predictions, targets, min_len=1)
    return float(mse(pred, true))


def pearson_r(predictions: Any, targets: Any) -> float:
    """Pearson correlation of predictions with targets (flattened); NaN when either is constant."""
    from torchmetrics.functional import pearson_corrcoef

    pred, true = _regression_pair(predictions, targets, min_len=2)
    if float(pred.std()) == 0.0 or float(true.std()) == 0.0:
        return float("nan")  # undefined; torchmetrics would warn and return an arbitrary value
    return float(pearson_corrcoef(pred, true))
