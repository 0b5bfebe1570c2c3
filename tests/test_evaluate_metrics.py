"""Evaluation metrics against values known in closed form, worked out by hand, or computed by an
independent implementation (torchmetrics' BLEU, a Mann-Whitney AUC, a direct CIDEr-D and MMD)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from factory.bench.cxr_phantom import roc_auc as mann_whitney_auc
from factory.data.labels import CXR_LABELS
from factory.errors import BadInputError
from factory.evaluate import metrics

NAN = float("nan")


# ---------------------------------------------------------------- FID and KID


def _with_moments(rng: np.random.Generator, n: int, mean: np.ndarray, cov_root: np.ndarray) -> np.ndarray:
    """n samples whose sample mean is exactly `mean` and sample covariance (n-1) exactly cov_root cov_root^T."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    chol = np.linalg.cholesky(z.T @ z / (n - 1))
    white = z @ np.linalg.inv(chol).T  # sample covariance exactly I
    return white @ cov_root.T + mean


def _closed_form_fid(mu1, s1, mu2, s2) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), square roots by symmetric eigendecomposition."""
    def sqrt_psd(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    root = sqrt_psd(s1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * sqrt_psd(root @ s2 @ root)))


def test_fid_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(300, 16))
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_diagonal_gaussians_by_hand():
    # N((0,0), diag(1,4)) vs N((1,2), diag(4,9)): |mu|^2 = 5; per axis s1 + s2 - 2 sqrt(s1 s2) = 1 and 1.
    rng = np.random.default_rng(1)
    a = _with_moments(rng, 400, np.zeros(2), np.diag([1.0, 2.0]))
    b = _with_moments(rng, 500, np.array([1.0, 2.0]), np.diag([2.0, 3.0]))
    assert metrics.fid(a, b) == pytest.approx(7.0, abs=1e-8)
    assert metrics.fid(b, a) == pytest.approx(7.0, abs=1e-8)


def test_fid_of_correlated_gaussians_matches_closed_form():
    rng = np.random.default_rng(2)
    d = 6
    root1, root2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = _with_moments(rng, 200, mu1, root1), _with_moments(rng, 300, mu2, root2)
    expected = _closed_form_fid(mu1, root1 @ root1.T, mu2, root2 @ root2.T)
    assert metrics.fid(a, b) == pytest.approx(expected, rel=1e-7)


def test_fid_of_large_samples_approaches_the_population_value():
    # N(0, I) vs N(mu, I) in 4-D: FID = |mu|^2 = 4; sampling moves it by about 0.04 (one sd).
    rng = np.random.default_rng(3)
    mu = np.array([1.0, -1.0, 1.0, 1.0])
    value = metrics.fid(rng.normal(size=(20000, 4)), rng.normal(size=(20000, 4)) + mu)
    assert value == pytest.approx(4.0, abs=0.15)


@pytest.mark.parametrize("real, fake", [
    (np.zeros((10, 3)), np.zeros((10, 4))),  # dimensions differ
    (np.zeros((1, 3)), np.zeros((10, 3))),  # one sample has no covariance
    (np.full((10, 3), np.nan), np.zeros((10, 3))),
    (np.zeros(10), np.zeros(10)),  # not (samples, dims)
])
def test_fid_refuses_bad_features(real, fake):
    with pytest.raises(BadInputError):
        metrics.fid(real, fake)


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray, degree: int = 3) -> float:
    """Unbiased squared MMD with k(a, b) = (a.b / d + 1)^degree (Bińkowski et al.), written out directly."""
    d, m = x.shape[1], len(x)
    k = lambda a, b: (a @ b.T / d + 1.0) ** degree  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.sum() / m ** 2)


def test_kid_on_whole_sets_is_the_unbiased_mmd():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(120, 8)), rng.normal(size=(120, 8)) * 1.5 + 0.3
    mean, std = metrics.kid(x, y, subsets=3, subset_size=None)
    assert mean == pytest.approx(_unbiased_mmd2(x, y), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)  # every subset is the whole set


def test_kid_is_near_zero_for_one_distribution_and_large_for_two():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same, same_std = metrics.kid(x, y, subsets=20, subset_size=300)
    shifted, _ = metrics.kid(x, y + 0.5, subsets=20, subset_size=300)
    assert abs(same) < 0.01 and same_std < 0.01
    assert shifted > 50 * max(abs(same), 1e-3)
    state = torch.get_rng_state()
    assert metrics.kid(x, y, subsets=20, subset_size=300) == (same, same_std)  # seeded subsets
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is left alone


# ---------------------------------------------------------------- Inception-Score analogue


def _brute_force_is(p: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))) over every label configuration y, enumerated with itertools."""
    configs = list(itertools.product([0, 1], repeat=p.shape[1]))
    cond = np.array([[np.prod([pk if yk else 1 - pk for pk, yk in zip(row, y)]) for y in configs] for row in p])
    marginal = cond.mean(axis=0)
    return float(np.exp(np.mean([(c * np.log(c / marginal)).sum() for c in cond])))


def test_inception_score_extremes():
    assert metrics.inception_score(np.full((50, 4), 0.3)) == pytest.approx((1.0, 0.0))
    # Confident and evenly spread over all 2**3 configurations: the maximum, 8.
    every = np.array(list(itertools.product([0.0, 1.0], repeat=3)))
    assert metrics.inception_score(np.tile(every, (5, 1)))[0] == pytest.approx(8.0, rel=1e-6)


def test_inception_score_with_one_label_is_the_classic_two_class_score():
    p = np.array([[0.9], [0.2], [0.6], [0.05]])
    two_class = np.hstack([p, 1 - p])  # the softmax view: classic IS = exp(E KL(p(y|x) || p(y)))
    marginal = two_class.mean(axis=0)
    classic = math.exp(np.mean((two_class * np.log(two_class / marginal)).sum(axis=1)))
    assert metrics.inception_score(p)[0] == pytest.approx(classic, rel=1e-9)


def test_inception_score_matches_enumeration_and_splits():
    p = np.random.default_rng(6).uniform(0.01, 0.99, size=(40, 4))
    assert metrics.inception_score(p)[0] == pytest.approx(_brute_force_is(p), rel=1e-9)
    mean, std = metrics.inception_score(p, splits=4)
    parts = [_brute_force_is(part) for part in np.array_split(p, 4)]
    assert (mean, std) == pytest.approx((np.mean(parts), np.std(parts)), rel=1e-9)
    with pytest.raises(BadInputError):
        metrics.inception_score(p * 2)
    with pytest.raises(BadInputError):
        metrics.inception_score(p, splits=0)


# ---------------------------------------------------------------- AUC and label fidelity


def test_auc_by_hand_and_against_mann_whitney():
    # Classic example: one of the four positive/negative pairs is out of order.
    assert metrics.binary_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 5, 300) / 4.0  # many ties
    truth = rng.uniform(size=300) < 0.3 + 0.4 * scores
    assert metrics.binary_auc(scores, truth) == pytest.approx(mann_whitney_auc(scores, truth.astype(float)), abs=1e-6)
    assert math.isnan(metrics.binary_auc([0.2, 0.3], [1, 1]))


def test_label_fidelity_reads_chexpert_values_and_skips_undefined_labels():
    names = ["A", "B", "C"]
    labels = np.array([[1, 0, 1], [0, -1, 1], [np.nan, 1, 1], [1, 0, 1]], dtype=float)
    probs = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.1, 0.7, 0.5], [0.8, 0.2, 0.5]])
    result = metrics.label_fidelity(probs, labels, names)
    # A: positives {0, 3} above negatives {1, 2} -> 1. B: only row 2 is positive (-1 is not), and row 1
    # scores higher -> 2 of 3 pairs in order. C: always present -> undefined, left out of the macro.
    assert result["auc"]["A"] == pytest.approx(1.0)
    assert result["auc"]["B"] == pytest.approx(2 / 3)
    assert math.isnan(result["auc"]["C"])
    assert result["macro_auc"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["positives"] == {"A": 2, "B": 1, "C": 4}
    with pytest.raises(BadInputError):
        metrics.label_fidelity(probs[:, :2], labels, names)


# ---------------------------------------------------------------- BLEU, CIDEr-D, ROUGE-L


def test_bleu_by_hand():
    # candidate: the heart is normal in size (6 words); reference: the heart is normal size (5).
    # matches: 5/6 unigrams, 3/5 bigrams, 2/4 trigrams, 1/3 four-grams; longer than the reference: BP = 1.
    scores = metrics.bleu(["The heart is normal in size."], ["FINDINGS: the heart is normal size"])
    assert scores["bleu_1"] == pytest.approx(5 / 6, abs=1e-6)
    assert scores["bleu_2"] == pytest.approx((5 / 6 * 3 / 5) ** (1 / 2), abs=1e-6)
    assert scores["bleu_3"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4) ** (1 / 3), abs=1e-6)
    assert scores["bleu_4"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4), abs=1e-6)
    # Shorter than the reference: every n-gram matches but BP = exp(1 - 4/3).
    short = metrics.bleu(["heart is normal"], ["the heart is normal"], n=3)
    assert short["bleu_1"] == pytest.approx(math.exp(1 - 4 / 3), abs=1e-6)
    assert short["bleu_3"] == pytest.approx(math.exp(1 - 4 / 3), abs=1e-6)


CANDIDATES = ["the heart is normal in size", "small left pleural effusion", "no pneumothorax is seen",
              "mild pulmonary edema"]
REFERENCES = [["the heart size is normal", "normal heart size"], ["small left pleural effusion"],
              ["there is no pneumothorax", "no pneumothorax"], ["moderate pulmonary edema", "pulmonary edema is mild"]]


def test_corpus_bleu_agrees_with_torchmetrics():
    from torchmetrics.functional.text import bleu_score

    ours = metrics.bleu(CANDIDATES, REFERENCES)
    for n in range(1, 5):
        theirs = float(bleu_score(CANDIDATES, REFERENCES, n_gram=n))
        assert ours[f"bleu_{n}"] == pytest.approx(theirs, abs=1e-6), n


def _cider_d(candidates, references, n=4, sigma=6.0) -> float:
    """CIDEr-D written from Vedantam et al. (2015) with coco-caption's choices (clipped tf-idf
    cosine per n-gram order, Gaussian length penalty, x10, idf over the corpus' references)."""
    def grams(words, k):
        return Counter(tuple(words[i:i + k]) for i in range(len(words) - k + 1))

    cands = [c.split() for c in candidates]
    refs = [[r.split() for r in rs] for rs in references]
    df = Counter()
    for rs in refs:
        df.update({g for r in rs for k in range(1, n + 1) for g in grams(r, k)})
    log_n = math.log(len(cands))

    def tfidf(words, k):
        return {g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in grams(words, k).items()}

    scores = []
    for c, rs in zip(cands, refs):
        total = 0.0
        for r in rs:
            for k in range(1, n + 1):
                vc, vr = tfidf(c, k), tfidf(r, k)
                nc, nr = math.sqrt(sum(v * v for v in vc.values())), math.sqrt(sum(v * v for v in vr.values()))
                dot = sum(min(v, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, v in vc.items())
                cosine = dot / (nc * nr) if nc and nr else 0.0
                total += cosine * math.exp(-((len(c) - len(r)) ** 2) / (2 * sigma ** 2)) / n
        scores.append(10 * total / len(rs))
    return float(np.mean(scores))


def test_cider_agrees_with_a_direct_implementation():
    assert metrics.cider(CANDIDATES, REFERENCES) == pytest.approx(_cider_d(CANDIDATES, REFERENCES), rel=1e-9)


def test_cider_known_values():
    # Each candidate equals its one reference and no n-gram is shared across samples: every cosine is
    # 1 and there is no length penalty, so CIDEr-D = 10.
    assert metrics.cider(["heart normal size today", "large left effusion seen"],
                         ["heart normal size today", "large left effusion seen"]) == pytest.approx(10.0)
    # One sample: every n-gram occurs in all (one) reference sets, every idf is 0.
    assert metrics.cider(["the heart is normal"], ["the heart is normal"]) == pytest.approx(0.0)


def test_rouge_l_by_hand():
    # LCS(the heart is normal in size, the heart size is normal) = "the heart is normal": 4 words.
    p, r, beta2 = 4 / 6, 4 / 5, 1.2 ** 2
    expected = (1 + beta2) * p * r / (r + beta2 * p)
    assert metrics.rouge_l(["the heart is normal in size"], ["the heart size is normal"]) == pytest.approx(expected)
    # Several references: precision and recall are maximised separately (coco-caption's rule).
    p2, r2 = max(4 / 6, 3 / 6), max(4 / 5, 3 / 3)  # second reference: LCS "heart is normal"
    two_refs = metrics.rouge_l(["the heart is normal in size"], [["the heart size is normal", "heart is normal"]])
    assert two_refs == pytest.approx((1 + beta2) * p2 * r2 / (r2 + beta2 * p2))
    # Averaged over samples; an empty candidate scores 0.
    assert metrics.rouge_l(["the heart is normal in size", ""], ["the heart size is normal", "no effusion"]) \
        == pytest.approx(expected / 2)


def test_text_normalisation_and_bad_input():
    assert metrics.normalise("FINDINGS: The heart is normal.\nIMPRESSION: 1. No acute process.") == \
        "the heart is normal no acute process"
    scores = metrics.report_metrics(["heart normal"], ["heart normal"])
    assert set(scores) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider", "rouge_l"}
    with pytest.raises(BadInputError):
        metrics.bleu(["a", "b"], ["a"])
    with pytest.raises(BadInputError):
        metrics.cider([], [])
    with pytest.raises(BadInputError):
        metrics.rouge_l(["a"], [[]])


# ---------------------------------------------------------------- labeler agreement

REPORTS = [
    "No acute cardiopulmonary process.",  # No Finding
    "Moderate cardiomegaly. No pleural effusion.",  # Cardiomegaly
    "Possible small left pleural effusion.",  # uncertain: the effusion is not stated
    "Right pneumothorax. Left PICC line in place.",  # Pneumothorax + Support Devices
    "The lungs are clear.",  # says normal, but the sample was made with edema
    "Mild pulmonary edema and bibasilar atelectasis.",  # Edema + Atelectasis
]


def _labels(*rows: dict[str, float]) -> np.ndarray:
    out = np.full((len(rows), len(CXR_LABELS)), np.nan)
    for i, row in enumerate(rows):
        for name, value in row.items():
            out[i, CXR_LABELS.index(name)] = value
    return out


def test_labeler_agreement_on_hand_written_reports():
    labels = _labels({"No Finding": 1}, {"Cardiomegaly": 1, "Pleural Effusion": 0}, {"Pleural Effusion": 1},
                     {"Pneumothorax": 1, "Support Devices": 1, "Pleural Effusion": -1}, {"Edema": 1},
                     {"Edema": 1, "Atelectasis": 1, "No Finding": 0})
    result = metrics.labeler_agreement(REPORTS, labels)
    # Disagreements: report 3 on Pleural Effusion; report 5 on No Finding and Edema.
    assert result["agreement"] == pytest.approx(4 / 6)
    assert result["accuracy"] == pytest.approx(51 / 54)
    assert result["per_label"]["No Finding"] == pytest.approx(5 / 6)
    assert result["per_label"]["Pleural Effusion"] == pytest.approx(5 / 6)
    assert result["per_label"]["Edema"] == pytest.approx(5 / 6)
    assert result["per_label"]["Cardiomegaly"] == 1.0
    # 7 findings stated, 8 intended, 6 of them shared.
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((6 / 7, 6 / 8, 12 / 15))


def test_labeler_agreement_on_a_subset_of_labels():
    result = metrics.labeler_agreement(REPORTS[1:3], np.array([[1, 0], [0, 1]]), ["Cardiomegaly", "Pleural Effusion"])
    assert result["agreement"] == pytest.approx(0.5) and result["accuracy"] == pytest.approx(0.75)
    with pytest.raises(BadInputError):
        metrics.labeler_agreement(REPORTS[:2], np.zeros((2, 1)), ["Fracture"])
    with pytest.raises(BadInputError):
        metrics.labeler_agreement(REPORTS[:2], np.zeros((3, 9)))


# ---------------------------------------------------------------- regression


def test_mean_squared_error_and_pearson_by_hand():
    assert metrics.mean_squared_error([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(7.5)
    assert metrics.pearson_r([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    # deviations (-1, 0, 1) and (-1, 1, 0): covariance 1, variances 2 and 2 -> r = 1/2.
    assert metrics.pearson_r([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert metrics.pearson_r(torch.tensor([3.0, 2.0, 1.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(-1.0)
    assert math.isnan(metrics.pearson_r([1, 1, 1], [1, 2, 3]))
    with pytest.raises(BadInputError):
        metrics.mean_squared_error([1, 2], [1, 2, 3])
    with pytest.raises(BadInputError):
        metrics.pearson_r([1.0, NAN], [1.0, 2.0])


def test_clinical_efficacy_micro_macro_over_the_eight_findings():
    from factory.evaluate.metrics import clinical_efficacy, stated_findings

    names = list(CXR_LABELS)
    labels = np.zeros((4, len(names)), np.float32)
    labels[0, names.index("Cardiomegaly")] = 1
    labels[1, names.index("Edema")] = 1
    labels[2, names.index("Edema")] = 1
    labels[3, names.index("No Finding")] = 1
    reports = ["The heart is enlarged.", "Mild pulmonary edema.", "No edema. Cardiomegaly.", "No acute process."]
    ce = clinical_efficacy(stated_findings(reports), labels)
    # stated: Cardiomegaly x2 (one right), Edema x1 (right); intended: Cardiomegaly 1, Edema 2
    assert ce["micro"] == {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3}
    assert ce["macro"]["f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # only findings with a labelled positive
    assert ce["macro"]["precision"] == pytest.approx((0.5 + 1.0) / 2)
    assert ce["exact_match"] == 0.75  # "No Finding" is no finding: sample 4 agrees
    normal = clinical_efficacy(stated_findings(["No acute process."] * 4), labels)
    assert normal["micro"]["f1"] == 0.0 and normal["macro"]["recall"] == 0.0
    with pytest.raises(BadInputError):
        clinical_efficacy(np.zeros((3, len(names)), bool), labels)
