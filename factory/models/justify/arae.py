"""The ARAE of §3.1 (Zhao et al., "Adversarially Regularized Autoencoders"): descriptions (the
diagnosis, then a caption) to a continuous code and back, the code regularised by a WGAN between
the encoder's codes and a generator's.

A description is a token sequence over the caption vocabulary followed by one token per diagnosis
(ids vocab_size .. vocab_size + num_labels - 1): [diagnosis, caption words..., <eos>]. The decoder's
first output is the diagnosis (a softmax over the diagnoses, the paper's "first decoded word"), so
p(d | code) is one LSTM step; the caption follows conditional on the diagnosis.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from factory.data.text.vocab import Vocabulary, split_sentences, tokenize


def captions_of(report: str, config: Mapping[str, Any]) -> list[list[str]]:
    """§4.1: the report's sentences packed in order into captions of at most `caption_words` tokens
    (a longer sentence is cut), captions shorter than `min_caption_words` dropped, the first
    `captions_per_study` kept."""
    limit, shortest = config["caption_words"], config["min_caption_words"]
    captions: list[list[str]] = []
    current: list[str] = []
    for sentence in split_sentences(report):
        words = tokenize(sentence)[:limit]
        if current and len(current) + len(words) > limit:
            captions.append(current)
            current = []
        current = current + words
    if current:
        captions.append(current)
    return [c for c in captions if len(c) >= shortest][: config["captions_per_study"]]


def encode_descriptions(reports: Sequence[str], diagnoses: Sequence[int], vocabulary: Vocabulary,
                        config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Every study's descriptions as token ids (B, captions_per_study, caption_words + 2) int64 —
    [diagnosis, words..., <eos>, <pad>...] — and how many each has (B,), at least 1: a study
    without a usable caption is described by its diagnosis alone."""
    k, length = config["captions_per_study"], config["caption_words"] + 2
    out = np.full((len(reports), k, length), vocabulary.pad_id, dtype=np.int64)
    counts = np.ones(len(reports), dtype=np.int64)
    for row, (report, diagnosis) in enumerate(zip(reports, diagnoses)):
        captions = captions_of(report, config) or [[]]
        counts[row] = len(captions)
        for j, words in enumerate(captions):
            ids = [len(vocabulary) + int(diagnosis), *vocabulary.ids(words), vocabulary.eos_id]
            out[row, j, : len(ids)] = ids
    return out, counts


def caption_vocabulary(reports: Sequence[str], config: Mapping[str, Any], min_count: int) -> Vocabulary:
    """The vocabulary of the reports' captions (tokens seen at least `min_count` times)."""
    from factory.data.text.vocab import detokenize

    return Vocabulary.build((detokenize(c) for r in reports for c in captions_of(r, config)), min_count=min_count)


class TextAutoencoder(nn.Module):
    """Encoder E and decoder D (single-layer LSTMs, hidden = code_dim). `encode` gives the code: E's
    last hidden state (at each description's <eos>), normalised to unit length as ARAE's is. The
    decoder reads [token embedding, code] at every step from a zero state: its first output (after
    <bos>) is the diagnosis, then the caption's words."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.vocab_size, self.num_labels = config["vocab_size"], config["num_labels"]
        e, v = config["word_embedding"], config["code_dim"]
        self.embed = nn.Embedding(self.vocab_size + self.num_labels, e, padding_idx=Vocabulary.pad_id)
        self.encoder = nn.LSTM(e, v, batch_first=True)
        self.decoder = nn.LSTM(e + v, v, batch_first=True)
        self.diagnosis_head = nn.Linear(v, self.num_labels)
        self.word_head = nn.Linear(v, self.vocab_size)

    def train(self, mode: bool = True) -> TextAutoencoder:
        """The LSTMs stay in training mode: they have no dropout, so both modes compute the same, and
        cuDNN's RNN backward refuses eval mode (M and I's step differentiate through the decoder of a
        fixed AE)."""
        super().train(mode)
        self.encoder.train(True)
        self.decoder.train(True)
        return self

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Descriptions (B, T) -> codes (B, code_dim), unit length."""
        outputs, _ = self.encoder(self.embed(tokens))
        last = (tokens != Vocabulary.pad_id).sum(dim=1).clamp(min=1) - 1
        code = outputs[torch.arange(tokens.shape[0], device=tokens.device), last]
        return F.normalize(code, dim=1)

    def _bos(self, code: torch.Tensor) -> torch.Tensor:
        bos = torch.full((code.shape[0], 1), Vocabulary.bos_id, dtype=torch.long, device=code.device)
        return torch.cat([self.embed(bos), code[:, None]], dim=2)

    def diagnosis_logits(self, code: torch.Tensor) -> torch.Tensor:
        """The decoder's first output: logits over the diagnoses (B, num_labels)."""
        h, _ = self.decoder(self._bos(code))
        return self.diagnosis_head(h[:, 0])

    def teacher_forced(self, code: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """code (B, v) and descriptions (B, T) -> diagnosis logits (B, num_labels) and word logits
        (B, T - 1, vocab_size) for tokens 1..T-1, each step reading the previous true token."""
        steps = torch.cat([self.embed(tokens[:, :-1]), code[:, None].expand(-1, tokens.shape[1] - 1, -1)], dim=2)
        h, _ = self.decoder(torch.cat([self._bos(code), steps], dim=1))
        return self.diagnosis_head(h[:, 0]), self.word_head(h[:, 1:])

    def forward(self, tokens: torch.Tensor, code_noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The autoencoder: descriptions (B, T) -> (codes (B, v), diagnosis logits, word logits), the
        decoder reading code + `code_noise` (ARAE's noise on codes in training)."""
        code = self.encode(tokens)
        noisy = code if code_noise is None else code + code_noise
        return (code, *self.teacher_forced(noisy, tokens))

    def decode(self, code: torch.Tensor, diagnosis: torch.Tensor, max_words: int) -> torch.Tensor:
        """Greedy caption for each code given its diagnosis: word ids (B, max_words + 1), <pad> after
        the first <eos>."""
        _, state = self.decoder(self._bos(code))
        token = self.vocab_size + diagnosis
        words = []
        for _ in range(max_words + 1):
            h, state = self.decoder(torch.cat([self.embed(token[:, None]), code[:, None]], dim=2), state)
            token = self.word_head(h[:, 0]).argmax(dim=1)
            words.append(token)
        ids = torch.stack(words, dim=1)
        ended = (ids == Vocabulary.eos_id).long().cumsum(dim=1) - (ids == Vocabulary.eos_id).long()
        return torch.where(ended > 0, torch.full_like(ids, Vocabulary.pad_id), ids)


def _mlp(inputs: int, hidden: int, outputs: int, act: nn.Module, norm: bool) -> nn.Sequential:
    """ARAE's three-layer MLPs (batch norm on the hidden layers of the generator)."""
    layers: list[nn.Module] = [nn.Linear(inputs, hidden)]
    if norm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [act, nn.Linear(hidden, hidden)]
    if norm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [act, nn.Linear(hidden, outputs)]
    return nn.Sequential(*layers)


class CodeGenerator(nn.Module):
    """ARAE's generator: noise (B, arae_noise) -> codes (B, code_dim)."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.net = _mlp(config["arae_noise"], config["arae_hidden"], config["code_dim"], nn.ReLU(), norm=True)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(s)


class CodeCritic(nn.Module):
    """ARAE's WGAN critic on codes: (B, code_dim) -> scores (B,). No batch norm: the gradient penalty
    is taken per sample."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.net = _mlp(config["code_dim"], config["arae_hidden"], 1, nn.LeakyReLU(0.2), norm=False)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code).squeeze(1)
