"""Tokenizer, sentence splitter and vocabulary for report decoders.

Reports are lowercased and split into words, numbers and punctuation tokens. `split_sentences`
drops section headers (FINDINGS:, IMPRESSION:, ...) and list numbers so a hierarchical decoder
(EMIXER's sentence LSTM -> word LSTM) sees one row per sentence. The vocabulary keeps tokens seen
at least `min_count` times (EMIXER keeps 6) and serialises to a plain JSON dict for model bundles.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np

from factory.errors import BadInputError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
JSON_FORMAT = "medsynth.vocabulary"
JSON_VERSION = 1

# Special tokens survive a decode/tokenize round trip; decimals ("1.5") and hyphenated or
# apostrophised words ("right-sided", "patient's") stay whole; any other symbol is its own token.
_TOKEN = re.compile(r"<[a-z]+>|\d+(?:\.\d+)?|[a-z]+(?:['-][a-z]+)*|[^\sa-z\d]")
_HEADERS = (
    "findings", "impression", "indication", "history", "clinical history", "comparison", "technique",
    "examination", "exam", "final report", "reason for exam", "notification", "recommendations?",
    "conclusion",
)
_HEADER = re.compile(r"(?i)(?:^|(?<=\s))(?:" + "|".join(_HEADERS) + r")\s*:")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_ENUMERATOR = re.compile(r"^\(?\d{1,2}[.)]\s*")
_NO_SPACE_BEFORE = re.compile(r"\s+([.,;:!?%)])")
_NO_SPACE_AFTER = re.compile(r"([(])\s+")


def tokenize(text: str) -> list[str]:
    """Lowercase word, number and punctuation tokens."""
    return _TOKEN.findall(text.lower())


def split_sentences(text: str) -> list[str]:
    """The report's sentences in order, without section headers or list numbers."""
    body = _HEADER.sub("\n", text)
    sentences = []
    for piece in _SENTENCE_END.split(body):
        piece = _ENUMERATOR.sub("", piece.strip()).strip()
        if any(ch.isalnum() for ch in piece):
            sentences.append(piece)
    return sentences


def detokenize(tokens: Iterable[str]) -> str:
    text = " ".join(tokens)
    return _NO_SPACE_AFTER.sub(r"\1", _NO_SPACE_BEFORE.sub(r"\1", text))


class Vocabulary:
    """Token <-> id map; ids 0..3 are <pad>, <bos>, <eos>, <unk>, then tokens by falling frequency."""

    pad_id, bos_id, eos_id, unk_id = range(4)

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        clash = [t for t in tokens if t in SPECIALS]
        if clash:
            raise ValueError(f"special tokens may not be listed as ordinary tokens: {clash}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary tokens must be unique")
        self.itos: list[str] = [*SPECIALS, *tokens]
        self.stoi: dict[str, int] = {tok: i for i, tok in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 6) -> "Vocabulary":
        """Keep tokens seen at least `min_count` times; ties in frequency sort alphabetically."""
        counts = Counter(tok for text in texts for tok in tokenize(text))
        kept = [tok for tok, n in counts.items() if n >= min_count and tok not in SPECIALS]
        return cls(sorted(kept, key=lambda tok: (-counts[tok], tok)))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __hash__(self) -> int:
        return hash(tuple(self.itos))

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def ids(self, tokens: Iterable[str]) -> list[int]:
        return [self.stoi.get(tok, self.unk_id) for tok in tokens]

    def encode(self, text: str, *, bos: bool = True, eos: bool = True, length: int | None = None) -> list[int]:
        """Token ids of `text`; with `length`, truncated (keeping <eos> last) or padded with <pad>."""
        ids = ([self.bos_id] if bos else []) + self.ids(tokenize(text)) + ([self.eos_id] if eos else [])
        if length is None:
            return ids
        if len(ids) > length:
            ids = ids[:length]
            if eos and length > 0:
                ids[-1] = self.eos_id
        return ids + [self.pad_id] * (length - len(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Text up to the first <eos>; <pad> and <bos> are dropped, unknown ids read as <unk>."""
        tokens = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            tokens.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return detokenize(tokens)

    def encode_sentences(self, text: str, max_sentences: int, max_words: int) -> np.ndarray:
        """(max_sentences, max_words) int64 ids for a hierarchical decoder.

        Row i holds sentence i's tokens and <eos> (truncated to keep <eos> last); rows past the
        report's last sentence are all <pad>, which is the sentence decoder's STOP target.
        """
        out = np.full((max_sentences, max_words), self.pad_id, dtype=np.int64)
        for row, sentence in enumerate(split_sentences(text)[:max_sentences]):
            ids = self.encode(sentence, bos=False, eos=True)
            if len(ids) > max_words:
                ids = ids[: max_words - 1] + [self.eos_id]
            out[row, : len(ids)] = ids
        return out

    def decode_sentences(self, ids: np.ndarray) -> str:
        """Inverse of `encode_sentences`: stops at the first all-<pad> row."""
        sentences = []
        for row in np.asarray(ids):
            if len(row) == 0 or int(row[0]) == self.pad_id:
                break
            sentences.append(self.decode(row))
        return " ".join(s for s in sentences if s)

    def to_json(self) -> dict[str, Any]:
        return {"format": JSON_FORMAT, "version": JSON_VERSION, "specials": list(SPECIALS),
                "tokens": self.itos[len(SPECIALS):]}

    @classmethod
    def from_json(cls, data: Any, source: str = "vocabulary") -> "Vocabulary":
        """Rebuild from `to_json()` output; `source` names the file in errors."""
        if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
            raise BadInputError(source, f"not a {JSON_FORMAT} JSON object")
        if data.get("version") != JSON_VERSION:
            raise BadInputError(source, f"vocabulary version {data.get('version')!r} is not {JSON_VERSION}")
        if data.get("specials") != list(SPECIALS):
            raise BadInputError(source, f"special tokens {data.get('specials')!r} differ from {list(SPECIALS)}")
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise BadInputError(source, "'tokens' must be a list of strings")
        try:
            return cls(tokens)
        except ValueError as err:
            raise BadInputError(source, str(err)) from None
