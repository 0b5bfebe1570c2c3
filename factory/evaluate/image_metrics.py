"""Image and label metrics over judge outputs: FID, KID, an Inception-Score analogue, label fidelity.

Every function takes plain arrays (numpy or torch): features or probabilities that a judge
(factory.evaluate.judge.Judge) computed, so the metrics know nothing of networks or storage and
can be tested on numbers whose answer is known.

- FID and KID come from torchmetrics (FrechetInceptionDistance, KernelInceptionDistance), fed
  through an identity "feature extractor" so that they run on features the judge already computed.
  Both work in float64.
- Label fidelity is the macro ROC-AUC of the judge's probabilities on synthetic images against the
  labels the images were conditioned on (torchmetrics' exact binary AUROC per label).
- Labels follow CheXpert values: 1 is present; 0 (absent), -1 (uncertain) and NaN (not mentioned)
  all count as not present.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from factory.errors import BadInputError
from factory.seeding import global_rng_seeded

MAX_IS_LABELS = 16  # the Inception-Score analogue enumerates 2**K label configurations
_EPS = 1e-12
_TINY = 1e-300
_IS_CHUNK = 1 << 22  # entries of p(y|x) held at once


class _GivenFeatures(nn.Module):
    """Identity 'feature extractor': torchmetrics' FID and KID then consume precomputed features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def as_matrix(values: Any, name: str, min_rows: int = 1) -> np.ndarray:
    """A finite float64 (N, D) array, or BadInputError naming `name`."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise BadInputError(name, f"expected a 2-D (samples, dims) array, got shape {array.shape}")
    if array.shape[0] < min_rows:
        raise BadInputError(name, f"needs at least {min_rows} samples, got {array.shape[0]}")
    if array.shape[1] < 1:
        raise BadInputError(name, "has no columns")
    if not np.all(np.isfinite(array)):
        raise BadInputError(name, "contains NaN or infinite values")
    return array


def _feature_pair(real: Any, fake: Any, min_rows: int) -> tuple[np.ndarray, np.ndarray]:
    real = as_matrix(real, "real features", min_rows)
    fake = as_matrix(fake, "synthetic features", min_rows)
    if real.shape[1] != fake.shape[1]:
        raise BadInputError("features", f"real have {real.shape[1]} dimensions, synthetic {fake.shape[1]}")
    return real, fake


def fid(real_features: Any, fake_features: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D):
    |mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), covariances with N-1 normalisation.

    It is biased upwards for small sets; compare values only at equal set sizes."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _feature_pair(real_features, fake_features, min_rows=2)
    metric = FrechetInceptionDistance(feature=_GivenFeatures(real.shape[1]))
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    # eigvals of S_r S_f can come out slightly negative or complex for rank-deficient covariances;
    # torchmetrics keeps the real part of their square roots. Round-off can leave -1e-12 for equal sets.
    return max(float(metric.compute()), 0.0)


def kid(real_features: Any, fake_features: Any, subsets: int = 100, subset_size: int | None = 1000,
        degree: int = 3, gamma: float | None = None, coef: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: the unbiased estimate of the squared MMD with the polynomial kernel
    (gamma x.y + coef)^degree, gamma = 1/D by default, averaged over `subsets` random subsets of
    `subset_size` samples from each set (capped at the smaller set). Returns (mean, std over subsets).
    Unbiased: it is near 0, and may be slightly negative, for sets from one distribution."""
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _feature_pair(real_features, fake_features, min_rows=2)
    size = min(real.shape[0], fake.shape[0], subset_size or real.shape[0])
    if size < 2:
        raise BadInputError("kid", f"subset_size must be at least 2, got {subset_size}")
    with warnings.catch_warnings():  # it warns that it keeps all features: they are already in memory here
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_GivenFeatures(real.shape[1]), subsets=subsets,
                                         subset_size=size, degree=degree, gamma=gamma, coef=float(coef))
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    with global_rng_seeded(seed):  # subsets are drawn from torch's global generator
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(probabilities: Any, splits: int = 1) -> tuple[float, float]:
    """Inception-Score analogue for a multi-label judge: exp(E_x KL(p(y|x) || p(y))).

    The classic score reads a softmax classifier's p(y|x) over classes. A multi-label judge gives
    independent sigmoids p_k(x), so here y is the whole label configuration (one of 2**K on/off
    vectors) and p(y|x) = prod_k p_k(x)^y_k (1 - p_k(x))^(1 - y_k), the distribution the sigmoid
    head models; p(y) is its mean over the images. The score is then exp of the mutual information
    between image and label configuration under the judge, as the original is: 1 when every image
    gets the same prediction, up to 2**K when the images are confidently and evenly spread over all
    configurations. Real data reach less than that (findings are not equally likely), so compare a
    generator's score with the real data's, not with the maximum.

    `probabilities` is (N, K) in [0, 1] with K <= 16. With `splits` > 1 the images are cut into that
    many consecutive parts, as the original does; returns (mean, std) over the parts.
    """
    probs = as_matrix(probabilities, "probabilities", min_rows=1)
    if probs.min() < 0 or probs.max() > 1:
        raise BadInputError("probabilities", "values must lie in [0, 1]")
    n, k = probs.shape
    if k > MAX_IS_LABELS:
        raise BadInputError("probabilities", f"{k} labels: at most {MAX_IS_LABELS} (2**K configurations are enumerated)")
    if not isinstance(splits, int) or not 1 <= splits <= n:
        raise BadInputError("inception_score", f"splits must be an integer in [1, {n}], got {splits!r}")
    probs = np.clip(probs, _EPS, 1 - _EPS)
    configs = ((np.arange(2 ** k)[:, None] >> np.arange(k)[None, :]) & 1).astype(np.float64)  # (2**K, K)
    rows = max(1, _IS_CHUNK // 2 ** k)  # images per block of the (images, 2**K) matrices

    def log_conditional(block: np.ndarray) -> np.ndarray:  # log p(y|x) for every configuration y
        return np.log(block) @ configs.T + np.log1p(-block) @ (1 - configs).T

    scores = []
    for part in np.array_split(probs, splits):
        blocks = [part[i:i + rows] for i in range(0, len(part), rows)]
        marginal = sum(np.exp(log_conditional(block)).sum(axis=0) for block in blocks) / len(part)
        log_marginal = np.log(np.maximum(marginal, _TINY))
        kl = np.concatenate([(np.exp(lc) * (lc - log_marginal)).sum(axis=1)
                             for lc in map(log_conditional, blocks)])
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def present(labels: Any) -> np.ndarray:
    """Boolean (N, K) 'finding present' from CheXpert-valued labels: only 1 counts."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0) == 1.0


def binary_auc(scores: Any, truth: Any) -> float:
    """ROC-AUC of `scores` for boolean `truth` (exact, ties counted half); NaN when `truth` has only
    one class, where the AUC is undefined."""
    from torchmetrics.functional.classification import binary_auroc

    truth = np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():
        return float("nan")
    scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    # binary_auroc passes scores outside [0, 1] through a sigmoid, which leaves their order (the AUC) unchanged.
    return float(binary_auroc(scores, torch.from_numpy(truth.astype(np.int64))))


def multilabel_auc(probabilities: Any, labels: Any, label_names: Sequence[str]) -> dict[str, Any]:
    """Per-label and macro ROC-AUC of (N, K) scores against CheXpert-valued (N, K) labels.

    Returns {"macro_auc": float, "auc": {name: float}, "positives": {name: int}}. A label with no
    positive or no negative sample has AUC NaN and is left out of the macro mean (NaN if all are)."""
    probs = as_matrix(probabilities, "probabilities")
    truth = present(labels)
    if truth.shape != probs.shape:
        raise BadInputError("labels", f"shape {truth.shape} does not match probabilities {probs.shape}")
    if len(label_names) != probs.shape[1]:
        raise BadInputError("label_names", f"{len(label_names)} names for {probs.shape[1]} columns")
    aucs = {name: binary_auc(probs[:, k], truth[:, k]) for k, name in enumerate(label_names)}
    defined = [v for v in aucs.values() if not np.isnan(v)]
    return {"macro_auc": float(np.mean(defined)) if defined else float("nan"), "auc": aucs,
            "positives": {name: int(truth[:, k].sum()) for k, name in enumerate(label_names)}}


def label_fidelity(probabilities: Any, conditioning_labels: Any, label_names: Sequence[str]) -> dict[str, Any]:
    """How well synthetic images show the labels they were generated for: the judge's macro ROC-AUC
    on the synthetic images, scored against their conditioning labels (see `multilabel_auc`).
    Read it next to the judge's AUC on held-out real images, its ceiling."""
    return multilabel_auc(probabilities, conditioning_labels, label_names)
