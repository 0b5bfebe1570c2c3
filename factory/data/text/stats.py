"""Corpus statistics and label agreement for report collections (phantom or model-written)."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from factory.data.labels import CXR_LABELS
from factory.data.text.vocab import split_sentences, tokenize


def corpus_stats(reports: Iterable[str]) -> dict[str, float]:
    """Distinct words (alphabetic tokens), distinct sentences, and mean sentences/words per report."""
    words: set[str] = set()
    sentences: set[str] = set()
    n_reports = n_sentences = n_words = 0
    for report in reports:
        n_reports += 1
        for sentence in split_sentences(report):
            n_sentences += 1
            sentences.add(sentence.lower())
            tokens = tokenize(sentence)
            n_words += len(tokens)
            words.update(t for t in tokens if t[0].isalpha())
    return {
        "reports": n_reports,
        "distinct_words": len(words),
        "distinct_sentences": len(sentences),
        "sentences_per_report": n_sentences / max(n_reports, 1),
        "tokens_per_report": n_words / max(n_reports, 1),
    }


def label_f1(truth: Sequence[Mapping[str, float]], predicted: Sequence[Mapping[str, float]],
             labels: Sequence[str] = CXR_LABELS) -> dict[str, dict[str, float]]:
    """Per-label precision, recall, F1 and support, counting only value 1 as positive.

    Uncertain (-1), negated (0) and unmentioned (missing) all count as not positive, so a report
    that hedges about a present finding is a miss.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} truth rows but {len(predicted)} predictions")
    table = {}
    for label in labels:
        tp = fp = fn = 0
        for t, p in zip(truth, predicted):
            is_true, is_pred = t.get(label) == 1.0, p.get(label) == 1.0
            tp += is_true and is_pred
            fp += is_pred and not is_true
            fn += is_true and not is_pred
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        table[label] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    return table
