"""EMIXER networks (Biswal et al., "EMIXER: End-to-end Multimodal X-ray Generation via Self-supervision").

- G: label-conditioned image generator. z is split into chunks of `z_chunk` (20): the first feeds the
  4x4 stem (a linear layer), each later chunk one res-block-up, concatenated with the 128-d linear
  embedding of the multi-hot label vector; conditional batch norm in every block, self-attention
  before the last block (the paper's three res-blocks, attention, one more res-block at 64x64).
  The number of up-blocks follows the image size (4 at 64, 5 at 128), so z has 20 x (blocks + 1)
  dimensions: the paper's 120 at its 128x128, 100 at 64x64.
- D_image: BigGAN res-block-down trunk with a real/fake linear head, a projection term
  (label embedding . features, only for labelled samples) and a 4-way rotation head.
- F: report generator. CNN image encoder (`f_encoder`: the discriminators' BigGAN trunk, or a
  torchvision ResNet-10/18 with batch norm, trained from scratch: no pretrained weights here; a linear
  label head on its features learns the labels, as the paper's encoder was trained to) ->
  sentence LSTM (reading the image feature and, `sentence_feedback`, the previous sentence's mean word
  embedding) whose hidden state gives a STOP logit and, through three linear layers, a topic
  vector -> multi-layer word LSTM fed [topic, <bos>, words...] (teacher-forced: every sentence in
  parallel, in buckets of like length; writing: sentence by sentence, each read back before the next).
- D_report: LSTMs over the report's word embeddings: a word LSTM per sentence, then a sentence LSTM
  over the sentences' final states (padding rows and words included, as real reports have them).
- D_joint: image CNN trunk + report LSTM, concatenated, MLP head.
Conv and linear layers of G and the discriminators are spectral-normalised; LSTMs are not.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from factory.data.labels import CXR_LABELS
from factory.data.text.vocab import Vocabulary
from factory.models.blocks import ImageEncoder, ResBlockUp, ResNetEncoder, SelfAttention, embed_tokens, sn
from factory.models.spec import GeneratorSpec, PairSampling, UntrainedShape

# Buckets of sentence rows the teacher-forced word LSTM runs in, each as far as its longest sentence.
WORD_BUCKETS = 2
NET_NAMES = ("G", "F", "D_image", "D_report", "D_joint")
F_ENCODERS = {"biggan": None, "resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2)}  # ResNet blocks per stage

# Architecture first, then the training hyper-parameters the recipe reads (paper values where it
# gives them); the whole dict is stored in bundles.
DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 64,
    "channels": 1,
    "num_labels": len(CXR_LABELS),
    "z_chunk": 20,
    "class_embedding": 128,
    "g_width": 32,
    "d_width": 32,
    "attention": True,
    "vocab_size": 512,
    "max_sentences": 8,
    "max_words": 24,
    "f_width": 16,
    # F's image encoder: "biggan" (the discriminators' trunk, f_width wide) or a torchvision ResNet
    # with batch norm, "resnet10" or "resnet18" (a classifier backbone, as the paper's DenseNet is;
    # it reads the findings far better than the BigGAN trunk when trained alone: docs/bench/train_emixer.md).
    "f_encoder": "biggan",
    # F's encoder may start from a chest X-ray classifier bundle (TrainConfig.start_from; the paper's
    # DenseNet is pretrained so): `f_encoder_frozen` then keeps it and its label head as they came (in
    # eval mode: batch norm on the classifier's running statistics), and F's encoder reads its images
    # normalised as the classifier read its films, ((x + 1) / 2 - f_input_mean) / f_input_std for F's
    # x in [-1, 1] (0.5 / 0.5: x itself).
    "f_encoder_frozen": False,
    "f_input_mean": 0.5,
    "f_input_std": 0.5,
    "image_feature": 512,
    "word_embedding": 128,
    "hidden": 256,
    "word_layers": 3,
    # Not in the paper: the sentence LSTM also reads the previous sentence (the mean embedding of its
    # words: the real one when teacher-forced, F's own when writing). Without it every sentence's topic is
    # the same function of the image, and an argmax decoder writes one formulaic negation throughout
    # (docs/bench/train_emixer.md).
    "sentence_feedback": True,
    "d_text_hidden": 128,
    # Words of a sentence at inference: 1 = greedy, more = beam search of that width (each sentence
    # apart, the highest total log-probability). Training's free-running reports stay Gumbel samples.
    "report_beam": 1,
    # training
    "lr": {"G": 5e-5, "F": 5e-5, "D_image": 2e-4, "D_report": 2e-4, "D_joint": 2e-4},
    "betas": [0.0, 0.999],
    "d_steps": 2,
    "label_fraction": 1.0,
    "label_seed": 0,
    "rotation_weight_d": 1.0,
    "rotation_weight_g": 0.2,
    "report_weight": 1.0,
    "joint_weight": 1.0,
    "mle_weight": 1.0,
    # Teacher-forced F updates per training step: 1 is the F step alone; k > 1 adds k - 1 updates of F's
    # likelihood (and label-head) terms alone on the same real pairs after the G step. Not in the paper: at
    # a few hundred steps F's words lag the images (docs/bench/train_emixer.md), and these updates cost no
    # sampling and, with F's encoder frozen, no encoder gradients.
    "mle_steps": 1,
    # F's encoder also learns the labels (a linear head, BCE on labelled real images): the stand-in for
    # the paper's encoder, a DenseNet pretrained as a chest X-ray classifier; 0 turns it off.
    "encoder_label_weight": 1.0,
    # Not in the paper: G is also asked that F's label head read the conditioning labels in its images
    # (labelled fakes only), a direct label-consistency signal beside the projection term; 0 = the paper.
    "label_consistency_weight": 0.0,
    "gumbel_temperature": 1.0,
}


def make_config(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """The full model config: defaults updated by `overrides` and keyword arguments, checked.

    Raises ValueError on an unknown key or an impossible value.
    """
    config = {**DEFAULT_CONFIG, **dict(overrides or {}), **kwargs}
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown EMIXER config keys: {unknown}")
    size = config["image_size"]
    if not isinstance(size, int) or size < 16 or size & (size - 1):
        raise ValueError(f"image_size must be a power of two >= 16, not {size!r}")
    if set(config["lr"]) != set(NET_NAMES):
        raise ValueError(f"lr must give a learning rate for each of {list(NET_NAMES)}")
    if not 0.0 <= config["label_fraction"] <= 1.0:
        raise ValueError(f"label_fraction must lie in [0, 1], not {config['label_fraction']!r}")
    if config["f_encoder"] not in F_ENCODERS:
        raise ValueError(f"f_encoder must be one of {sorted(F_ENCODERS)}, not {config['f_encoder']!r}")
    for key in ("f_encoder_frozen", "sentence_feedback"):
        if not isinstance(config[key], bool):
            raise ValueError(f"{key} must be true or false, not {config[key]!r}")
    if not isinstance(config["f_input_std"], (int, float)) or config["f_input_std"] <= 0:
        raise ValueError(f"f_input_std must be positive, not {config['f_input_std']!r}")
    if config["vocab_size"] <= Vocabulary.unk_id:
        raise ValueError("vocab_size must exceed the 4 special tokens")
    for key in ("channels", "num_labels", "z_chunk", "class_embedding", "g_width", "d_width", "f_width",
                "max_sentences", "max_words", "image_feature", "word_embedding", "hidden", "word_layers",
                "d_text_hidden", "d_steps", "report_beam", "mle_steps"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, not {config[key]!r}")
    config["betas"] = list(config["betas"])
    return config


def up_blocks(image_size: int) -> int:
    return int(math.log2(image_size // 4))


def z_dim(config: Mapping[str, Any]) -> int:
    return config["z_chunk"] * (up_blocks(config["image_size"]) + 1)


class Generator(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        n_up = up_blocks(config["image_size"])
        width = config["g_width"]
        out_channels = [width * min(2 ** (n_up - 1 - i), 8) for i in range(n_up)]
        in_channels = [out_channels[0], *out_channels[:-1]]
        self.z_chunk = config["z_chunk"]
        self.z_dim = z_dim(config)
        cond_dim = self.z_chunk + config["class_embedding"]
        self.class_embed = sn(nn.Linear(config["num_labels"], config["class_embedding"], bias=False))
        self.stem = sn(nn.Linear(self.z_chunk, out_channels[0] * 16))
        self.blocks = nn.ModuleList(ResBlockUp(i, o, cond_dim) for i, o in zip(in_channels, out_channels))
        self.attention = SelfAttention(out_channels[-2]) if config["attention"] else None
        self.out_bn = nn.BatchNorm2d(out_channels[-1], eps=1e-4)
        self.out_conv = sn(nn.Conv2d(out_channels[-1], config["channels"], 3, padding=1))

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, z_dim) noise and (B, num_labels) multi-hot labels -> (B, C, S, S) images in [-1, 1]."""
        chunks = torch.split(z, self.z_chunk, dim=1)
        y = self.class_embed(labels)
        h = self.stem(chunks[0]).view(z.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, torch.cat([chunks[i + 1], y], dim=1))
            if self.attention is not None and i == len(self.blocks) - 2:
                h = self.attention(h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class ImageDiscriminator(nn.Module):
    """D(I, y) = c_rf(phi(I)) + [labelled] y^T W phi(I), plus rotation logits Q(r | I)."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.trunk = ImageEncoder(config["image_size"], config["channels"], config["d_width"])
        features = self.trunk.out_channels
        self.real_fake = sn(nn.Linear(features, 1))
        self.projection = sn(nn.Linear(config["num_labels"], features, bias=False))
        self.rotation = sn(nn.Linear(features, 4))

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Adversarial logits (B,) and rotation logits (B, 4). Samples with labelled False (or all,
        when labels is None) get no projection term, so their labels neither count nor get gradients."""
        h = self.trunk(images)
        logits = self.real_fake(h).squeeze(1)
        if labels is not None:
            if labelled is not None:
                # where(), not a product: unknown labels may be NaN, and 0 * NaN is NaN.
                labels = torch.where(labelled[:, None], labels, torch.zeros_like(labels))
            logits = logits + (self.projection(labels) * h).sum(dim=1)
        return logits, self.rotation(h)


class ReportGenerator(nn.Module):
    """F: image -> hierarchical report (max_sentences x max_words token grid)."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        hidden, embedding = config["hidden"], config["word_embedding"]
        self.max_sentences, self.max_words = config["max_sentences"], config["max_words"]
        self.beam = config["report_beam"]
        resnet_blocks = F_ENCODERS[config["f_encoder"]]
        self.encoder = (ImageEncoder(config["image_size"], config["channels"], config["f_width"], spectral=False)
                        if resnet_blocks is None else ResNetEncoder(config["channels"], resnet_blocks))
        # Layer norm on the image feature and the topics: a classifier's pooled features run to norms near
        # 100, which saturate the sentence LSTM's gates (every sentence, every image the same topic) and,
        # through topics of norm ~140, the word LSTM's (docs/bench/train_emixer.md).
        self.feature = nn.Sequential(nn.Linear(self.encoder.out_channels, config["image_feature"]),
                                     nn.LayerNorm(config["image_feature"]))
        self.label_head = nn.Linear(self.encoder.out_channels, config["num_labels"])
        # ((x + 1) / 2 - mean) / std as one affine map of x
        self.input_scale = 0.5 / float(config["f_input_std"])
        self.input_shift = (0.5 - float(config["f_input_mean"])) / float(config["f_input_std"])
        self.encoder_frozen = bool(config["f_encoder_frozen"])
        if self.encoder_frozen:
            for p in (*self.encoder.parameters(), *self.label_head.parameters()):
                p.requires_grad_(False)
        self.feedback = bool(config["sentence_feedback"])
        self.sentence_lstm = nn.LSTMCell(config["image_feature"] + (embedding if self.feedback else 0), hidden)
        self.stop = nn.Linear(hidden, 1)
        self.topic = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                   nn.Linear(hidden, embedding), nn.LayerNorm(embedding))
        self.word_embed = nn.Embedding(config["vocab_size"], embedding)
        self.word_lstm = nn.LSTM(embedding, hidden, num_layers=config["word_layers"], batch_first=True)
        self.word_out = nn.Linear(hidden, config["vocab_size"])

    def train(self, mode: bool = True) -> ReportGenerator:
        super().train(mode)
        if self.encoder_frozen:  # a frozen classifier reads with its own batch-norm statistics
            self.encoder.eval()
        return self

    def read(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's pooled features of (B, C, S, S) images in [-1, 1]."""
        if self.input_scale != 1.0 or self.input_shift != 0.0:
            images = images * self.input_scale + self.input_shift
        return self.encoder(images)

    def forward(self, images: torch.Tensor, reports: torch.Tensor | None = None, *, mode: str = "teacher",
                temperature: float = 1.0, generator: torch.Generator | None = None,
                max_sentences: int | None = None, max_words: int | None = None, with_labels: bool = False,
                features: torch.Tensor | None = None):
        """mode "teacher": given (B, S, W) reports, returns (stop logits (B, S), word logits (B, S, W, V),
        label logits (B, L) of the encoder's label head). Word logits past a sentence's last non-pad word
        and in a sentence row that does not exist (all <pad>: nothing to predict) are zeros; the word LSTM
        does not run there.
        mode "greedy" / "sample" (softmax at `temperature`): token ids (B, S, W).
        mode "best": "greedy" when the config's `report_beam` is 1, else beam search of that width.
        mode "labels": the label head's logits (B, L) alone.
        mode "features": the encoder's pooled features (B, C) alone.
        mode "gumbel": straight-through Gumbel-softmax one-hot words (B, S, W, V) at `temperature`,
        differentiable with respect to F (and, through the image, G).
        Rows after the sentence decoder's STOP and words after <eos> are <pad> in every sampling mode.
        `with_labels` (sampling modes): also return the label head's logits, from the same encoder pass.
        `features`: the encoder's pooled features of `images` when the caller has them (a frozen encoder
        reads the same images the same way each time), which are then not read again."""
        if features is None:
            features = self.read(images)
        if mode == "features":
            return features
        label_logits = self.label_head(features)
        if mode == "labels":
            return label_logits
        v = self.feature(features)
        if mode == "teacher":
            topics, stop_logits = self._teacher_sentences(v, reports)
            return stop_logits, self._teacher_words(topics, reports), label_logits
        if mode == "best":
            mode = "greedy" if self.beam == 1 else "beam"
        if mode not in ("greedy", "beam", "sample", "gumbel"):
            raise ValueError(f"unknown report mode {mode!r}")
        if mode not in ("greedy", "beam") and generator is None:
            raise ValueError(f"report mode {mode!r} needs a torch.Generator")
        tokens = self._write(v, max_sentences or self.max_sentences, max_words or self.max_words, mode,
                             temperature, generator)
        return (tokens, label_logits) if with_labels else tokens

    def _teacher_words(self, topics: torch.Tensor, reports: torch.Tensor) -> torch.Tensor:
        """Teacher-forced word logits (B, S, W, V) for topics (B, S, E): a row's logits at its positions up
        to its last non-pad word, zeros after it and in rows that do not exist (all <pad>).

        The word LSTM is causal and its rows independent, so a row's logits up to its length do not depend
        on how far the LSTM runs past it: rows sorted by length run in a few buckets, each only as far as
        its longest sentence (phantom sentences fill a third of max_words on average)."""
        b, s, w = reports.shape
        e = topics.shape[-1]
        words, topics = reports.reshape(b * s, w), topics.reshape(b * s, e)
        positions = torch.arange(1, w + 1, device=words.device)
        lengths, order = torch.where(words != Vocabulary.pad_id, positions, 0).amax(dim=1).sort(stable=True)
        counts = lengths.tolist()
        first = counts.count(0)  # sorted: the rows before it do not exist
        if first == len(counts):  # no sentence at all: row 0's first word, so that every parameter takes part
            lengths, order, counts, first = lengths[:1] + 1, order[:1], [1], 0
        hidden, flat = [], []
        for start, stop in _buckets(counts[first:], WORD_BUCKETS):
            rows, n = order[first + start:first + stop], counts[first + stop - 1]
            bos = self.word_embed.weight[Vocabulary.bos_id].expand(len(rows), 1, e)
            out, _ = self.word_lstm(torch.cat([topics[rows, None], bos, self.word_embed(words[rows, :n - 1])], dim=1))
            keep = positions[:n] <= lengths[first + start:first + stop, None]  # each row's own words
            hidden.append(out[:, 1:][keep])  # output t + 1 predicts word t
            flat.append((rows[:, None] * w + positions[:n] - 1)[keep])
        logits = self.word_out(torch.cat(hidden))
        return logits.new_zeros(b * s * w, logits.shape[1]).index_copy(0, torch.cat(flat), logits).view(b, s, w, -1)

    def _summary(self, words: torch.Tensor) -> torch.Tensor:
        """Mean embedding of a sentence's words (<eos> included, <pad> not): (..., W) ids or (..., W, V)
        one-hot rows -> (..., E); an empty sentence gives zeros."""
        if words.dtype == torch.long:
            embedded, real = self.word_embed(words), (words != Vocabulary.pad_id).to(self.word_embed.weight.dtype)
        else:
            embedded, real = words @ self.word_embed.weight, 1.0 - words[..., Vocabulary.pad_id].detach()
        return (embedded * real[..., None]).sum(-2) / real.sum(-1, keepdim=True).clamp(min=1.0)

    def _teacher_sentences(self, v: torch.Tensor, reports: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Topics (B, S, E) and STOP logits (B, S), sentence s reading the real sentence s - 1."""
        inputs = v[:, None].expand(-1, reports.shape[1], -1)
        if self.feedback:  # sentence s reads the summary of sentence s - 1, the first zeros (as in writing)
            summaries = self._summary(reports)
            inputs = torch.cat([inputs, torch.cat([torch.zeros_like(summaries[:, :1]), summaries[:, :-1]], 1)], 2)
        state, hidden = None, []
        for s in range(reports.shape[1]):
            state = self.sentence_lstm(inputs[:, s], state)
            hidden.append(state[0])
        h = torch.stack(hidden, dim=1)
        return self.topic(h), self.stop(h).squeeze(-1)

    def _write(self, v: torch.Tensor, sentences: int, max_words: int, mode: str, temperature: float,
               generator: torch.Generator | None) -> torch.Tensor:
        """Free-running report, sentence by sentence: ids (B, S, W), one-hot (B, S, W, V) for "gumbel".
        Rows after the sentence decoder's STOP and words after <eos> are <pad>."""
        b = v.shape[0]
        # STOP draws come first: the word loop may end early, and what it draws depends on when.
        stop_draws = None if mode in ("greedy", "beam") else uniform((b, sentences), generator, v.device)
        state, rows = None, []
        previous = v.new_zeros(b, self.word_embed.embedding_dim)  # what the first sentence reads back
        exists = torch.ones(b, dtype=torch.bool, device=v.device)
        for s in range(sentences):
            state = self.sentence_lstm(torch.cat([v, previous], dim=1) if self.feedback else v, state)
            stop_logit = self.stop(state[0]).squeeze(-1)
            # A sentence exists while no STOP has been drawn at or before it.
            exists = exists & ~(stop_logit > 0 if stop_draws is None else stop_draws[:, s] < torch.sigmoid(stop_logit))
            topic = self.topic(state[0])
            if mode == "beam":
                words = self._beam_words(topic, max_words, self.beam)
            else:
                words = self._words(topic, max_words, mode, temperature, generator)
            rows.append(_mask_to_pad(words, exists[:, None]))
            if not bool(exists.any()):  # every report has ended: the remaining rows are <pad>
                rows += [rows[-1]] * (sentences - len(rows))
                break
            if self.feedback:
                previous = self._summary(rows[-1])
        return torch.stack(rows, dim=1)

    def _words(self, topics: torch.Tensor, max_words: int, mode: str, temperature: float,
               generator: torch.Generator | None) -> torch.Tensor:
        _, state = self.word_lstm(topics[:, None])
        x = self.word_embed.weight[Vocabulary.bos_id].expand(topics.shape[0], -1)
        finished = torch.zeros(topics.shape[0], dtype=torch.bool, device=topics.device)
        outputs = []
        for _ in range(max_words):
            if outputs and bool(finished.all()):  # every sentence has ended: the rest is <pad>
                pad = _mask_to_pad(outputs[-1], torch.zeros_like(finished))
                outputs += [pad] * (max_words - len(outputs))
                break
            out, state = self.word_lstm(x[:, None], state)
            logits = self.word_out(out[:, 0])
            if mode == "greedy":
                token = logits.argmax(dim=-1)
            else:
                noisy = logits / temperature + gumbel(logits.shape, generator, logits.device).to(logits.dtype)
                token = noisy.argmax(dim=-1)
            if mode == "gumbel":
                soft = torch.softmax(noisy, dim=-1)
                # Straight-through: the forward pass sees one-hot words, gradients follow the softmax.
                word = F.one_hot(token, logits.shape[-1]).to(soft.dtype) - soft.detach() + soft
                word = _mask_to_pad(word, ~finished)
                x = word @ self.word_embed.weight
            else:
                word = torch.where(finished, torch.full_like(token, Vocabulary.pad_id), token)
                x = self.word_embed(word)
            finished = finished | (token == Vocabulary.eos_id)
            outputs.append(word)
        return torch.stack(outputs, dim=1)


    def _beam_words(self, topics: torch.Tensor, max_words: int, width: int) -> torch.Tensor:
        """Token ids (N, max_words) of the `width`-beam search for each of N sentence topics: the words
        with the highest total log-probability found. A beam that has written <eos> continues with
        <pad> at no cost, so finished and unfinished beams compete on their totals."""
        n, vocab = topics.shape[0], self.word_out.out_features
        _, (h, c) = self.word_lstm(topics[:, None])
        h, c = h.repeat_interleave(width, dim=1), c.repeat_interleave(width, dim=1)
        x = self.word_embed.weight[Vocabulary.bos_id].expand(n * width, -1)
        # Only the first beam is live at the start, so the first step's `width` best words seed the beams.
        scores = torch.full((n, width), float("-inf"), device=topics.device)
        scores[:, 0] = 0.0
        finished = torch.zeros(n * width, dtype=torch.bool, device=topics.device)
        history = torch.zeros(n * width, 0, dtype=torch.long, device=topics.device)
        pad_only = torch.full((vocab,), float("-inf"), device=topics.device)
        pad_only[Vocabulary.pad_id] = 0.0
        for _ in range(max_words):
            if history.shape[1] and bool(finished.all()):
                break
            out, (h, c) = self.word_lstm(x[:, None], (h, c))
            log_p = torch.log_softmax(self.word_out(out[:, 0]).float(), dim=-1)
            log_p = torch.where(finished[:, None], pad_only, log_p)
            total = (scores[:, :, None] + log_p.view(n, width, vocab)).view(n, width * vocab)
            scores, best = total.topk(width, dim=-1)
            parent = (best // vocab + torch.arange(n, device=topics.device)[:, None] * width).view(-1)
            token = (best % vocab).view(-1)
            h, c, history, finished = h[:, parent], c[:, parent], history[parent], finished[parent]
            history = torch.cat([history, token[:, None]], dim=1)
            finished = finished | (token == Vocabulary.eos_id)
            x = self.word_embed(token)
        chosen = history.view(n, width, -1)[:, 0]  # topk sorts: beam 0 has the best total
        padding = torch.full((n, max_words - chosen.shape[1]), Vocabulary.pad_id, dtype=torch.long,
                             device=topics.device)
        return torch.cat([chosen, padding], dim=1)


def _buckets(lengths: list[int], k: int) -> list[tuple[int, int]]:
    """Split ascending `lengths` into at most k contiguous (start, stop) runs, the ends chosen to run the
    fewest padded steps, sum of (rows x longest) over the runs (exhaustive over k - 1 cuts, each where the
    length grows: at most max_words - 1 places)."""
    n = len(lengths)
    places = [i for i in range(1, n) if lengths[i] > lengths[i - 1]]
    best: tuple[int, list[tuple[int, int]]] = (n * lengths[-1], [(0, n)])
    for cuts in itertools.combinations(places, min(k - 1, len(places))):
        ends = (0, *cuts, n)
        cost = sum((b - a) * lengths[b - 1] for a, b in zip(ends, ends[1:]))
        if cost < best[0]:
            best = (cost, list(zip(ends, ends[1:])))
    return best[1]


def _mask_to_pad(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Replace tokens (ids, or one-hot rows in the last dim) where `keep` is False by <pad>."""
    if tokens.dtype == torch.long:
        return torch.where(keep, tokens, torch.full_like(tokens, Vocabulary.pad_id))
    pad = torch.zeros(tokens.shape[-1], dtype=tokens.dtype, device=tokens.device)
    pad[Vocabulary.pad_id] = 1
    return torch.where(keep[..., None], tokens, pad)


def uniform(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """U(0, 1) drawn on the generator's own device, then moved: a CPU generator can drive GPU work."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def gumbel(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    u = uniform(shape, generator, device).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


class _ReportReader(nn.Module):
    """Report -> vector: a word LSTM reads every sentence (all sentences as one batch), a sentence
    LSTM reads the sentences' last states. Reading hierarchically keeps the sequential depth at
    words + sentences instead of words x sentences, which is what an LSTM's cost follows."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        hidden = config["d_text_hidden"]
        self.embed = nn.Embedding(config["vocab_size"], config["word_embedding"])
        self.words = nn.LSTM(config["word_embedding"], hidden, batch_first=True)
        self.sentences = nn.LSTM(hidden, hidden, batch_first=True)

    def forward(self, reports: torch.Tensor) -> torch.Tensor:
        b, s = reports.shape[:2]
        _, (h, _) = self.words(embed_tokens(self.embed.weight, reports.flatten(0, 1)))
        _, (h, _) = self.sentences(h[-1].view(b, s, -1))
        return h[-1]


class ReportDiscriminator(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        hidden = config["d_text_hidden"]
        self.reader = _ReportReader(config)
        self.head = nn.Sequential(sn(nn.Linear(hidden, hidden)), nn.ReLU(), sn(nn.Linear(hidden, 1)))

    def forward(self, reports: torch.Tensor) -> torch.Tensor:
        """Reports as ids (B, S, W) or one-hot words (B, S, W, V) -> logits (B,)."""
        return self.head(self.reader(reports)).squeeze(1)


class JointDiscriminator(nn.Module):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        hidden = config["d_text_hidden"]
        self.image = ImageEncoder(config["image_size"], config["channels"], config["d_width"])
        self.image_embed = sn(nn.Linear(self.image.out_channels, hidden))
        self.reader = _ReportReader(config)
        self.report_embed = sn(nn.Linear(hidden, hidden))
        self.head = nn.Sequential(nn.ReLU(), sn(nn.Linear(2 * hidden, hidden)), nn.ReLU(), sn(nn.Linear(hidden, 1)))

    def forward(self, images: torch.Tensor, reports: torch.Tensor, image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B,) of pairs (images[image_index[i]], reports[i]); image_index None pairs them in order.
        An image in several pairs (a real image with its own and another study's report) is read once."""
        image = self.image_embed(self.image(images))
        if image_index is not None:
            image = image[image_index]
        joint = torch.cat([image, self.report_embed(self.reader(reports))], dim=1)
        return self.head(joint).squeeze(1)


def build_networks(config: Mapping[str, Any]) -> dict[str, nn.Module]:
    config = make_config(config)
    return {
        "G": Generator(config),
        "F": ReportGenerator(config),
        "D_image": ImageDiscriminator(config),
        "D_report": ReportDiscriminator(config),
        "D_joint": JointDiscriminator(config),
    }


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 1, H, W) in [-1, 1] -> (B, H, W) uint8."""
    return ((images[:, 0].float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def generate(nets: Mapping[str, nn.Module], labels: torch.Tensor, z: torch.Tensor, *,
             word_temperature: float | None = None, generator: torch.Generator | None = None,
             max_sentences: int | None = None, max_words: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (B, H, W) uint8 and report token ids (B, S, W) int64 for labels (B, L) and noise (B, z_dim).

    Greedy (or beam-searched: the config's `report_beam`) words unless `word_temperature` is given (then `generator` drives the sampling), so the
    output is a function of (labels, z[, generator state]) alone. Networks run in eval mode (batch
    norm on its running statistics), so a sample does not depend on the rest of its batch.
    """
    G, F_ = nets["G"], nets["F"]
    G.eval()
    F_.eval()
    first = next(G.parameters())
    with torch.inference_mode():
        images = G(z.to(device=first.device, dtype=first.dtype), labels.to(device=first.device, dtype=first.dtype))
        mode = "best" if word_temperature is None else "sample"
        ids = F_(images, mode=mode, temperature=word_temperature or 1.0, generator=generator,
                 max_sentences=max_sentences, max_words=max_words)
    return to_uint8(images), ids.cpu().numpy()


def write_reports(nets: Mapping[str, nn.Module], images: torch.Tensor) -> np.ndarray:
    """F's report token ids (B, S, W) of (B, C, S, S) images in [-1, 1] (real films, for instance): greedy
    or beam-searched words, as the config's `report_beam` says."""
    F_ = nets["F"]
    F_.eval()
    first = next(F_.parameters())
    with torch.inference_mode():
        return F_(images.to(device=first.device, dtype=first.dtype), mode="best").cpu().numpy()


def decode_reports(ids: np.ndarray, vocabulary: Vocabulary) -> list[str]:
    return [vocabulary.decode_sentences(report) for report in ids]


# Enough phantom reports for every word of the report grammar to pass the vocabulary's min count of 6.
UNTRAINED_REPORTS = 2000


def untrained_shape(size: int, seed: int, width: int | None = None) -> UntrainedShape:
    """An untrained EMIXER reads and writes the chest X-ray labels; its vocabulary comes from phantom
    reports (the phantom's own report grammar, no films drawn)."""
    from factory.data.phantoms.cxr import phantom_reports

    vocabulary = Vocabulary.build(phantom_reports(seed, UNTRAINED_REPORTS))
    overrides = {"image_size": size, "vocab_size": len(vocabulary), "num_labels": len(CXR_LABELS)}
    if width is not None:
        overrides.update(g_width=width, d_width=width, f_width=width)
    return UntrainedShape(overrides, list(CXR_LABELS), vocabulary.to_json(),
                          f"; vocabulary from {UNTRAINED_REPORTS} phantom chest X-ray reports")


SPEC = GeneratorSpec(
    name="emixer",
    summary="label -> chest X-ray image -> report (EMIXER)",
    make_config=make_config,
    build_networks=build_networks,
    untrained=untrained_shape,
    untrained_options=("width",),
    recipe="factory.train.recipes.emixer:EmixerRecipe",
    products=(PairSampling(z_dim=z_dim, generate=generate, decode_reports=decode_reports),),
)
