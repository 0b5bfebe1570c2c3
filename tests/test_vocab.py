"""Tokenizer, sentence splitter and Vocabulary (min count, hierarchical encoding, JSON round trip)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from factory.data.text.reports import write_report
from factory.data.text.vocab import SPECIALS, Vocabulary, split_sentences, tokenize
from factory.errors import BadInputError

REPORT = ("FINDINGS: Right-sided PICC line terminates 4.5 cm above the cavoatrial junction. "
          "There is a small left pleural effusion; no pneumothorax.\n\n"
          "IMPRESSION: 1. Small left effusion. 2. Patient's PICC in place.")


def test_tokenize():
    assert tokenize("Right-sided PICC line, 4.5 cm above the carina.") == [
        "right-sided", "picc", "line", ",", "4.5", "cm", "above", "the", "carina", "."]
    assert tokenize("Patient's 8mm nodule (stable)?") == ["patient's", "8", "mm", "nodule", "(", "stable", ")", "?"]
    assert tokenize("<unk> effusion <eos>") == ["<unk>", "effusion", "<eos>"]
    assert tokenize("") == []


def test_split_sentences_drops_headers_and_list_numbers():
    assert split_sentences(REPORT) == [
        "Right-sided PICC line terminates 4.5 cm above the cavoatrial junction.",
        "There is a small left pleural effusion; no pneumothorax.",
        "Small left effusion.", "Patient's PICC in place.",
    ]
    assert split_sentences("findings: lungs are clear. impression: normal") == ["lungs are clear.", "normal"]
    assert split_sentences("INDICATION: cough\nFINDINGS:\nNo effusion") == ["cough", "No effusion"]
    assert split_sentences("  \n. ") == []


def test_build_keeps_tokens_seen_min_count_times():
    texts = ["effusion edema"] * 6 + ["effusion nodule"] * 3 + ["rare"]
    vocab = Vocabulary.build(texts, min_count=6)
    assert vocab.itos == [*SPECIALS, "effusion", "edema"]  # most frequent first
    assert "nodule" not in vocab and "rare" not in vocab
    assert len(Vocabulary.build(texts, min_count=1)) == len(SPECIALS) + 4
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)


def test_encode_decode():
    vocab = Vocabulary.build([REPORT], min_count=1)
    ids = vocab.encode("Small left effusion.")
    assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id
    assert vocab.decode(ids) == "small left effusion."
    assert vocab.encode("massive goiter", bos=False, eos=False) == [vocab.unk_id, vocab.unk_id]
    padded = vocab.encode("small effusion", length=6)
    assert len(padded) == 6 and padded[-2:] == [vocab.pad_id, vocab.pad_id]
    cut = vocab.encode("small left pleural effusion", length=3)
    assert cut == [vocab.bos_id, vocab.stoi["small"], vocab.eos_id]
    assert vocab.decode([vocab.stoi["small"], vocab.eos_id, vocab.stoi["left"]]) == "small"
    assert vocab.decode([vocab.stoi["no"], 10_000]) == "no <unk>"


def test_hierarchical_encoding():
    vocab = Vocabulary.build([REPORT], min_count=1)
    grid = vocab.encode_sentences(REPORT, max_sentences=6, max_words=8)
    assert grid.shape == (6, 8) and grid.dtype == np.int64
    assert (grid[4:] == vocab.pad_id).all()  # four sentences, then STOP rows
    assert grid[0, -1] == vocab.eos_id  # a long sentence is cut and still ends with <eos>
    assert vocab.decode(grid[2]) == "small left effusion."
    wide = vocab.encode_sentences(REPORT, max_sentences=6, max_words=20)
    assert vocab.decode_sentences(wide) == " ".join(split_sentences(REPORT)).lower()
    assert vocab.encode_sentences(REPORT, max_sentences=2, max_words=20).shape == (2, 20)


def test_generated_reports_round_trip():
    rng = np.random.default_rng(0)
    reports = [write_report([], rng) for _ in range(200)]
    vocab = Vocabulary.build(reports, min_count=1)
    for report in reports[:20]:
        grid = vocab.encode_sentences(report, max_sentences=16, max_words=32)
        assert vocab.unk_id not in grid
        assert vocab.decode_sentences(grid) == " ".join(split_sentences(report)).lower()
    # With EMIXER's minimum count, rare words read back as <unk>.
    strict = Vocabulary.build(reports, min_count=6)
    assert len(strict) < len(vocab)
    decoded = " ".join(strict.decode_sentences(strict.encode_sentences(r, 16, 32)) for r in reports)
    assert "<unk>" in decoded


def test_json_round_trip_and_equality():
    vocab = Vocabulary.build([REPORT], min_count=1)
    data = json.loads(json.dumps(vocab.to_json()))
    again = Vocabulary.from_json(data)
    assert again == vocab and hash(again) == hash(vocab)
    assert again != Vocabulary.build(["other words"], min_count=1)
    assert again != vocab.itos


@pytest.mark.parametrize("mutate, problem", [
    (lambda d: d.update(format="pickle"), "not a medsynth.vocabulary"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d.update(specials=["<pad>"]), "special tokens"),
    (lambda d: d.update(tokens="effusion"), "list of strings"),
    (lambda d: d.update(tokens=["a", "a"]), "unique"),
    (lambda d: d.update(tokens=["<pad>"]), "special"),
])
def test_from_json_rejects_bad_input(mutate, problem):
    data = Vocabulary.build([REPORT], min_count=1).to_json()
    mutate(data)
    with pytest.raises(BadInputError, match=problem) as err:
        Vocabulary.from_json(data, source="bundle/vocab.json")
    assert "bundle/vocab.json" in str(err.value)
    with pytest.raises(BadInputError, match="bundle/vocab.json"):
        Vocabulary.from_json(["not", "a", "dict"], source="bundle/vocab.json")
