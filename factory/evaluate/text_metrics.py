"""Report metrics: BLEU-1..4, CIDEr-D and ROUGE-L (coco-caption), and labeler agreement.

BLEU, CIDEr-D and ROUGE-L are the coco-caption scorers (pycocoevalcap: pure Python, the
implementation the report-generation papers quote), so numbers compare with the literature:
- BLEU-n: corpus BLEU with uniform weights over 1..n-grams, brevity penalty against the closest
  reference length, summed over the whole corpus.
- CIDEr-D: TF-IDF n-gram (1..4) cosine similarity with clipping and a Gaussian length penalty
  (sigma 6), times 10; document frequencies come from the references of the corpus being scored,
  so it needs several samples to mean anything (with one sample every idf is 0 and so is CIDEr).
- ROUGE-L: per-sample LCS F-measure with beta 1.2 (precision and recall each maximised over the
  references), averaged over samples.

coco-caption tokenises with the Stanford PTB tokenizer (Java); here text is normalised as the
report decoders see it: section headers and list numbers dropped (`split_sentences`), lowercased,
tokenised by `factory.data.text.vocab.tokenize`, punctuation tokens removed (as the PTB step does).

Labeler agreement reads each report with the CheXpert-style labeler and compares its findings with
the labels the sample was made for (see `labeler_agreement`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from factory.data.labels import CXR_LABELS
from factory.errors import BadInputError


def normalise(text: str) -> str:
    """Report text as space-separated lowercase word tokens, headers and punctuation removed."""
    from factory.data.text.vocab import split_sentences, tokenize

    if not isinstance(text, str):
        raise BadInputError("report", f"expected text, got {type(text).__name__}")
    words = [token for sentence in split_sentences(text) for token in tokenize(sentence)
             if any(ch.isalnum() for ch in token)]
    return " ".join(words)


def _corpus(candidates: Sequence[str], references: Sequence[str | Sequence[str]]) -> tuple[dict, dict]:
    """coco-caption's input: {i: [candidate]} and {i: [reference, ...]}, normalised."""
    if isinstance(candidates, str) or isinstance(references, str):
        raise BadInputError("reports", "expected a sequence of reports, got one string")
    if len(candidates) != len(references):
        raise BadInputError("reports", f"{len(candidates)} candidates but {len(references)} references")
    if not candidates:
        raise BadInputError("reports", "no reports to score")
    hypotheses, refs = {}, {}
    for i, (candidate, reference) in enumerate(zip(candidates, references)):
        reference = [reference] if isinstance(reference, str) else list(reference)
        if not reference:
            raise BadInputError("reports", f"sample {i} has no reference report")
        hypotheses[i] = [normalise(candidate)]
        refs[i] = [normalise(r) for r in reference]
    return hypotheses, refs


def bleu(candidates: Sequence[str], references: Sequence[str | Sequence[str]], n: int = 4) -> dict[str, float]:
    """Corpus BLEU-1..n: {"bleu_1": ..., "bleu_n": ...}. Each reference entry is a report or a list
    of reports for the same sample."""
    from pycocoevalcap.bleu.bleu import Bleu

    hypotheses, refs = _corpus(candidates, references)
    scores, _ = Bleu(n).compute_score(refs, hypotheses, verbose=0)
    return {f"bleu_{k + 1}": float(score) for k, score in enumerate(scores)}


def cider(candidates: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus CIDEr-D (coco-caption's "CIDEr"): mean over samples, idf from the corpus' references."""
    from pycocoevalcap.cider.cider import Cider

    hypotheses, refs = _corpus(candidates, references)
    score, _ = Cider().compute_score(refs, hypotheses)
    return float(score)


def rouge_l(candidates: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """ROUGE-L (coco-caption, beta 1.2), averaged over samples; 0 for an empty candidate."""
    from pycocoevalcap.rouge.rouge import Rouge

    hypotheses, refs = _corpus(candidates, references)
    scorer = Rouge()
    # coco's scorer splits on " ", so an empty text would count as one empty token.
    scores = [scorer.calc_score(hypotheses[i], refs[i]) if hypotheses[i][0] else 0.0 for i in hypotheses]
    return float(np.mean(scores))


def report_metrics(candidates: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4, CIDEr-D and ROUGE-L in one dict."""
    return {**bleu(candidates, references), "cider": cider(candidates, references),
            "rouge_l": rouge_l(candidates, references)}


def labeler_agreement(reports: Sequence[str], labels: Any,
                      label_names: Sequence[str] = CXR_LABELS) -> dict[str, Any]:
    """Agreement of reports with the labels their samples were made for, through the labeler.

    Each report is read by `factory.data.text.labeler.label_report`; a finding counts as stated when
    the labeler returns 1 (a negated, uncertain or unmentioned finding is not stated), and as intended
    when its label is 1 (0, -1 and NaN are not), CheXpert's rule on both sides, No Finding included.
    `labels` is (N, K) over `label_names`, every name one the labeler knows (CXR_LABELS).

    Returns
      agreement    share of reports whose stated findings are exactly the intended ones (the headline:
                   per-finding accuracy alone is flattered by the many absent findings; a report that
                   always says "normal" scores high on it)
      accuracy     share of (report, finding) pairs that agree
      per_label    accuracy of each finding
      precision, recall, f1   micro-averaged over findings for "present" (the report-generation
                   literature's clinical-efficacy scores)
    """
    from factory.data.text.labeler import label_report

    from factory.evaluate.image_metrics import present

    if isinstance(reports, str):
        raise BadInputError("reports", "expected a sequence of reports, got one string")
    if not len(reports):
        raise BadInputError("reports", "no reports to score")
    intended = present(labels)
    if intended.ndim != 2 or intended.shape != (len(reports), len(label_names)):
        raise BadInputError("labels", f"shape {intended.shape}; expected ({len(reports)}, {len(label_names)})")
    unknown = [name for name in label_names if name not in CXR_LABELS]
    if unknown:
        raise BadInputError("label_names", f"the labeler does not know {unknown}")
    stated = np.array([[label_report(str(r)).get(name) == 1.0 for name in label_names] for r in reports])
    agree = stated == intended
    tp = int((stated & intended).sum())
    n_stated, n_intended = int(stated.sum()), int(intended.sum())
    precision = tp / n_stated if n_stated else float("nan")
    recall = tp / n_intended if n_intended else float("nan")
    f1 = 2 * tp / (n_stated + n_intended) if n_stated + n_intended else float("nan")
    return {"agreement": float(agree.all(axis=1).mean()), "accuracy": float(agree.mean()),
            "per_label": {name: float(agree[:, k].mean()) for k, name in enumerate(label_names)},
            "precision": precision, "recall": recall, "f1": f1}


# The eight findings clinical efficacy is scored over: every CheXpert-style label but "No Finding", which
# is the absence of the others, not a finding a report states.
CE_FINDINGS = tuple(name for name in CXR_LABELS if name != "No Finding")


def stated_findings(reports: Sequence[str], label_names: Sequence[str] = CXR_LABELS) -> np.ndarray:
    """(N, K) bool: which of `label_names` the labeler reads as present (1) in each report."""
    from factory.data.text.labeler import label_report

    if isinstance(reports, str):
        raise BadInputError("reports", "expected a sequence of reports, got one string")
    return np.array([[label_report(str(r)).get(name) == 1.0 for name in label_names] for r in reports],
                    dtype=bool).reshape(len(reports), len(label_names))


def clinical_efficacy(stated: Any, labels: Any, label_names: Sequence[str] = CXR_LABELS) -> dict[str, Any]:
    """Clinical efficacy (the report-generation literature's CE: precision, recall and F1 of what a
    labeler reads in generated reports against the study's labels), over the eight findings of
    CE_FINDINGS, present = positive on both sides.

    `stated` is (N, K) bool over `label_names` (`stated_findings` of reports, or a classifier's
    thresholded probabilities: the same figures for any reader); `labels` (N, K) CheXpert values, only 1
    counts. Micro: pooled over findings; macro: the mean of per-finding precision, recall and F1 (0 where
    undefined, as scikit-learn's zero_division=0), over findings with at least one labelled positive.
    `exact_match`: share of samples whose eight findings agree exactly (a secondary figure)."""
    from factory.evaluate.image_metrics import present

    stated = np.asarray(stated, dtype=bool)
    intended = present(labels)
    if stated.ndim != 2 or stated.shape != intended.shape or stated.shape[1] != len(label_names):
        raise BadInputError("labels", f"stated {stated.shape} and labels {intended.shape} must both be "
                                      f"(N, {len(label_names)})")
    if not len(stated):
        raise BadInputError("reports", "nothing to score")
    columns = [list(label_names).index(name) for name in CE_FINDINGS if name in label_names]
    if not columns:
        raise BadInputError("label_names", f"none of the findings {list(CE_FINDINGS)}")
    stated, intended = stated[:, columns], intended[:, columns]
    tp = (stated & intended).sum(axis=0)
    n_stated, n_intended = stated.sum(axis=0), intended.sum(axis=0)

    def ratio(a, b):
        return np.where(b > 0, a / np.maximum(b, 1), 0.0)

    precision, recall, f1 = ratio(tp, n_stated), ratio(tp, n_intended), ratio(2 * tp, n_stated + n_intended)
    scored = n_intended > 0
    names = [name for name in CE_FINDINGS if name in label_names]
    micro = {"precision": float(ratio(tp.sum(), n_stated.sum())), "recall": float(ratio(tp.sum(), n_intended.sum())),
             "f1": float(ratio(2 * tp.sum(), n_stated.sum() + n_intended.sum()))}
    macro = {key: float(values[scored].mean()) if scored.any() else float("nan")
             for key, values in (("precision", precision), ("recall", recall), ("f1", f1))}
    return {"micro": micro, "macro": macro, "exact_match": float((stated == intended).all(axis=1).mean()),
            "per_finding": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "positives": int(n)}
                            for name, p, r, f, n in zip(names, precision, recall, f1, n_intended)},
            "count": int(len(stated))}
