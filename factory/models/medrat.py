"""MedRAT networks (Hirsch, Dawidowicz & Tal, "MedRAT: Unpaired Medical Report Generation via Auxiliary
Tasks"): reports for chest X-rays, learnt from images and reports that are never paired.

One network, `medrat`, holds the paper's four blocks (§3, its Fig. 2), every trainable part shared by
the two modalities except the two feature extractors:
(a) feature extraction. Image stream F_I: a small CNN from scratch (stride-2 stages with group norm)
    whose last feature map's cells are the patch features, projected to `d_model`. Report stream F_R:
    word embeddings. Each stream adds its own learnt position embedding, then queries the shared
    memory (`SharedMemory`, eq. 1): f_m = f + r_f.
(b) shared encoder E_S: a transformer encoder over either stream's vectors gives the local
    representations; self-attention pooling (eq. 2-3) gives the global one.
(c) alignment on the global representation: the multi-label supervised contrastive loss
    (`supcon_loss`, eq. 4; positive pair = at least one shared positive label) and the classification
    head (two linear layers with a ReLU between them; `label_loss`, eq. 5).
(d) shared decoder D_R: a transformer decoder whose memory is [global; locals]. Training auto-encodes
    reports with teacher forcing; the report's locals are augmented first (each local vector dropped
    with probability `local_dropout`, then Gaussian noise of standard deviation `local_noise`; §3,
    Table 5). At inference an image's global and local representations go in instead and the decoder
    writes by beam search, or greedily (`report_beam` 1) (`caption`, the `Captioning` product).
The transformer layers carry no dropout of their own: the only random numbers of a training step are
the locals' augmentation, drawn from the step's generator (the recipe protocol's rule).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from factory.data.labels import CXR_LABELS
from factory.data.text.vocab import Vocabulary
from factory.models.spec import Captioning, GeneratorSpec, UntrainedShape

NET_NAME = "medrat"
NET_NAMES = (NET_NAME,)

# Architecture first, then the training settings the recipe reads; the whole dict is stored in bundles.
# The paper's sizes (a DenseNet-121 image extractor, 512-d transformers) are GPU sizes; these defaults
# train on a CPU.
DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 64,
    "channels": 1,
    "num_labels": len(CXR_LABELS),
    "vocab_size": 512,
    "max_words": 112,  # report tokens with <bos> and <eos> (phantom reports: 99 % within 106 words)
    "cnn_width": 16,  # F_I's first stage; channels double per stage (at most 8x)
    "patch_grid": 8,  # F_I halves the image down to patch_grid x patch_grid patch features
    "d_model": 64,
    "heads": 4,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "ff_dim": 128,
    "memory_size": 64,  # M memory vectors of d_model (0, with memory_top_k 0: no memory, f_m = f)
    "memory_top_k": 8,  # K queried per feature vector
    "class_hidden": 64,  # the classification head's hidden layer
    # inference: beam width (1: greedy) and the length normalisation alpha of Wu et al. 2016 (GNMT): a beam's
    # log-probability is divided by ((5 + words) / 6) ** alpha before the best is chosen (0: none); 3 and 2.0
    # were chosen on phantoms of another seed than the benchmark's (docs/bench/train_medrat.md)
    "report_beam": 3,
    "length_penalty": 2.0,
    # training
    "local_dropout": 0.9,  # the paper's p: each local vector of a report is masked out for the decoder
    "local_noise": 0.0,  # the paper's sigma (5 where it uses noise): additive Gaussian noise on the locals
    "temperature": 0.1,  # tau of the contrastive loss
    "lang_weight": 1.0,  # gamma_1..3 of eq. 6
    "contrast_weight": 1.0,
    "class_weight": 1.0,
    "lr": {NET_NAME: 5e-4},
    "betas": [0.9, 0.999],
}

_POSITIVE_INTS = ("channels", "num_labels", "max_words", "cnn_width", "patch_grid", "d_model", "heads",
                  "encoder_layers", "decoder_layers", "ff_dim", "class_hidden", "report_beam")


def make_config(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """The full model config: defaults updated by `overrides` and keyword arguments, checked.

    Raises ValueError on an unknown key or an impossible value."""
    config = {**DEFAULT_CONFIG, **dict(overrides or {}), **kwargs}
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown medrat config keys: {unknown}")
    for key in _POSITIVE_INTS:
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, not {config[key]!r}")
    size, grid = config["image_size"], config["patch_grid"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 16 or size & (size - 1):
        raise ValueError(f"image_size must be a power of two >= 16, not {size!r}")
    if grid & (grid - 1) or grid >= size:
        raise ValueError(f"patch_grid must be a power of two below image_size {size}, not {grid!r}")
    if config["d_model"] % config["heads"]:
        raise ValueError(f"d_model {config['d_model']} must be a multiple of heads {config['heads']}")
    for key in ("memory_size", "memory_top_k"):  # 0 and 0: no memory (the paper's Table 4 ablation)
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 0:
            raise ValueError(f"{key} must be a non-negative integer, not {config[key]!r}")
    if (config["memory_size"] == 0) != (config["memory_top_k"] == 0):
        raise ValueError("memory_size and memory_top_k are 0 together (no memory) or both positive")
    if config["memory_top_k"] > config["memory_size"]:
        raise ValueError(f"memory_top_k {config['memory_top_k']} exceeds memory_size {config['memory_size']}")
    if config["vocab_size"] <= Vocabulary.unk_id:
        raise ValueError("vocab_size must exceed the 4 special tokens")
    if config["max_words"] < 3:
        raise ValueError("max_words must leave room for <bos>, a word and <eos>")
    if not 0.0 <= config["local_dropout"] < 1.0:
        raise ValueError(f"local_dropout must lie in [0, 1), not {config['local_dropout']!r}")
    for key in ("local_noise", "lang_weight", "contrast_weight", "class_weight", "length_penalty"):
        if not isinstance(config[key], (int, float)) or isinstance(config[key], bool) or config[key] < 0:
            raise ValueError(f"{key} must be a number >= 0, not {config[key]!r}")
    if not isinstance(config["temperature"], (int, float)) or config["temperature"] <= 0:
        raise ValueError(f"temperature must be positive, not {config['temperature']!r}")
    if set(config["lr"]) != set(NET_NAMES):
        raise ValueError(f"lr must give a learning rate for each of {list(NET_NAMES)}")
    config["betas"] = list(config["betas"])
    return config


class SharedMemory(nn.Module):
    """The shared memory of §3.1: M trainable vectors. A feature f is projected (W_f) and compared by
    cosine similarity with the projected memory vectors (W_m,in); the top K, weighted by the softmax of
    their similarities, are projected (W_m,out) and summed into r_f (eq. 1); the output is f + r_f.
    Both modalities query the same memory, which is what pulls their features together."""

    def __init__(self, size: int, dim: int, top_k: int):
        super().__init__()
        self.memory = nn.Parameter(torch.randn(size, dim) / math.sqrt(dim))
        self.query = nn.Linear(dim, dim, bias=False)  # W_f
        self.key = nn.Linear(dim, dim, bias=False)  # W_m,in
        self.value = nn.Linear(dim, dim, bias=False)  # W_m,out
        self.top_k = top_k

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, n, d) -> (B, n, d)."""
        similarity = F.normalize(self.query(features), dim=-1) @ F.normalize(self.key(self.memory), dim=-1).T
        top, index = similarity.topk(self.top_k, dim=-1)  # (B, n, K): D_s and s
        weights = torch.softmax(top, dim=-1)
        response = (weights[..., None] * self.value(self.memory)[index]).sum(dim=-2)
        return features + response


class AttentionPool(nn.Module):
    """Eq. 2-3: A = softmax(W_SA2 tanh(W_SA1 Z^T)) over the n local vectors, z_global = A Z; padded
    positions get no weight."""

    def __init__(self, dim: int):
        super().__init__()
        self.hidden = nn.Linear(dim, dim, bias=False)  # W_SA1
        self.score = nn.Linear(dim, 1, bias=False)  # W_SA2

    def forward(self, locals_: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.score(torch.tanh(self.hidden(locals_)))[..., 0]  # (B, n)
        if padding is not None:
            scores = scores.masked_fill(padding, float("-inf"))
        return (torch.softmax(scores, dim=-1)[..., None] * locals_).sum(dim=1)


def _norm_groups(channels: int) -> int:
    return math.gcd(channels, 8)


class PatchCNN(nn.Module):
    """F_I: (B, C, S, S) in [-1, 1] -> (B, patch_grid^2, channels) patch features, row by row. Each
    stage halves the map (3x3 stride 2) and refines it (3x3), group norm and ReLU after each
    convolution: per-sample normalisation, so a caption does not depend on its batch."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        stages = int(math.log2(config["image_size"] // config["patch_grid"]))
        layers: list[nn.Module] = []
        previous = config["channels"]
        for i in range(stages):
            out = config["cnn_width"] * min(2 ** i, 8)
            layers += [nn.Conv2d(previous, out, 3, 2, 1), nn.GroupNorm(_norm_groups(out), out), nn.ReLU(),
                       nn.Conv2d(out, out, 3, 1, 1), nn.GroupNorm(_norm_groups(out), out), nn.ReLU()]
            previous = out
        self.net = nn.Sequential(*layers)
        self.out_channels = previous

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(2).transpose(1, 2)


def _causal_mask(length: int, device: torch.device) -> torch.Tensor:
    return torch.triu(torch.ones(length, length, dtype=torch.bool, device=device), diagonal=1)


class MedRAT(nn.Module):
    """The whole model. `forward(images, reports, ...)` is one training pass over a batch of images
    and a batch of (other studies') reports; `encode_images`, `encode_reports`, `classify`, `decode`
    and `write` are its parts."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        d, self.max_words = config["d_model"], config["max_words"]
        self.image_size = config["image_size"]
        self.beam, self.length_penalty = config["report_beam"], float(config["length_penalty"])
        self.local_dropout, self.local_noise = float(config["local_dropout"]), float(config["local_noise"])
        # (a) the two streams and the shared memory
        self.cnn = PatchCNN(config)
        self.patch_proj = nn.Linear(self.cnn.out_channels, d)
        self.patch_position = nn.Parameter(torch.randn(config["patch_grid"] ** 2, d) * 0.02)
        self.word_embed = nn.Embedding(config["vocab_size"], d, padding_idx=Vocabulary.pad_id)
        self.word_position = nn.Parameter(torch.randn(self.max_words, d) * 0.02)
        self.memory = (SharedMemory(config["memory_size"], d, config["memory_top_k"]) if config["memory_size"]
                       else nn.Identity())  # no memory: f_m = f
        # (b) the shared encoder and pooling
        layer = nn.TransformerEncoderLayer(d, config["heads"], config["ff_dim"], dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config["encoder_layers"], enable_nested_tensor=False)
        self.encoder_norm = nn.LayerNorm(d)
        self.pool = AttentionPool(d)
        # (c) the classification head (the contrastive loss reads the global representation itself)
        self.classifier = nn.Sequential(nn.Linear(d, config["class_hidden"]), nn.ReLU(),
                                        nn.Linear(config["class_hidden"], config["num_labels"]))
        # (d) the shared decoder
        self.decoder_embed = nn.Embedding(config["vocab_size"], d, padding_idx=Vocabulary.pad_id)
        self.decoder_position = nn.Parameter(torch.randn(self.max_words, d) * 0.02)
        layer = nn.TransformerDecoderLayer(d, config["heads"], config["ff_dim"], dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, config["decoder_layers"])
        self.decoder_norm = nn.LayerNorm(d)
        self.word_out = nn.Linear(d, config["vocab_size"])

    def _encode(self, features: torch.Tensor, padding: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        locals_ = self.encoder_norm(self.encoder(self.memory(features), src_key_padding_mask=padding))
        return locals_, self.pool(locals_, padding)

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) in [-1, 1] -> local (B, patches, d) and global (B, d) representations."""
        features = self.patch_proj(self.cnn(images)) + self.patch_position
        return self._encode(features, None)

    def encode_reports(self, reports: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T) token ids -> locals (B, T, d), global (B, d) and the padding mask (B, T)."""
        padding = reports == Vocabulary.pad_id
        features = self.word_embed(reports) + self.word_position[: reports.shape[1]]
        locals_, global_ = self._encode(features, padding)
        return locals_, global_, padding

    def classify(self, global_: torch.Tensor) -> torch.Tensor:
        """Label logits (B, num_labels) of global representations."""
        return self.classifier(global_)

    def decode(self, inputs: torch.Tensor, global_: torch.Tensor, locals_: torch.Tensor,
               hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced word logits (B, T, V) for decoder inputs (B, T) (<bos> first), reading
        [global; locals] with `hidden` (B, n) True where a local vector is not to be used."""
        memory = torch.cat([global_[:, None], locals_], dim=1)
        memory_padding = None
        if hidden is not None:
            memory_padding = torch.cat([torch.zeros_like(hidden[:, :1]), hidden], dim=1)  # the global is always read
        length = inputs.shape[1]
        x = self.decoder_embed(inputs) + self.decoder_position[:length]
        out = self.decoder(x, memory, tgt_mask=_causal_mask(length, inputs.device), tgt_is_causal=True,
                           tgt_key_padding_mask=inputs == Vocabulary.pad_id, memory_key_padding_mask=memory_padding)
        return self.word_out(self.decoder_norm(out))

    def augment(self, locals_: torch.Tensor, padding: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Training's augmentation of a report's locals (§3.2): each vector hidden from the decoder with
        probability local_dropout, then Gaussian noise of std local_noise on every entry."""
        shape = locals_.shape
        dropped = torch.rand(shape[:2], generator=generator, device=generator.device).to(locals_.device)
        hidden = padding | (dropped < self.local_dropout)
        if self.local_noise:
            noise = torch.randn(shape, generator=generator, device=generator.device).to(locals_.device, locals_.dtype)
            locals_ = locals_ + self.local_noise * noise
        return locals_, hidden

    def forward(self, images: torch.Tensor, reports: torch.Tensor,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One training pass: images (B, C, S, S) in [-1, 1] and reports (B', T) of other studies ->
        both streams' global representations and label logits, and the decoder's word logits (B', T-1, V)
        auto-encoding the reports from their augmented locals."""
        image_locals, image_global = self.encode_images(images)
        report_locals, report_global, padding = self.encode_reports(reports)
        augmented, hidden = self.augment(report_locals, padding, generator)
        return {"image_global": image_global, "report_global": report_global,
                "image_logits": self.classify(image_global), "report_logits": self.classify(report_global),
                "word_logits": self.decode(reports[:, :-1], report_global, augmented, hidden)}

    def _next_word_logits(self, word: torch.Tensor, position: int, memory: torch.Tensor,
                          past: list[torch.Tensor | None]) -> torch.Tensor:
        """Logits (N, V) of the word after `word` (N,) at `position`, each decoder layer's past inputs kept
        in `past` (appended to here): the causal mask means earlier positions never change, so this
        computes what `decode` computes on the whole prefix at a cost linear in the report's length."""
        x = (self.decoder_embed(word) + self.decoder_position[position])[:, None]
        for i, layer in enumerate(self.decoder.layers):  # nn.TransformerDecoderLayer, norm_first
            h = layer.norm1(x)
            past[i] = h if past[i] is None else torch.cat([past[i], h], dim=1)
            x = x + layer.self_attn(h, past[i], past[i], need_weights=False)[0]
            x = x + layer.multihead_attn(layer.norm2(x), memory, memory, need_weights=False)[0]
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return self.word_out(self.decoder_norm(x[:, 0]))

    def write(self, global_: torch.Tensor, locals_: torch.Tensor, beam: int | None = None,
              length_penalty: float | None = None) -> torch.Tensor:
        """Report ids (B, max_words - 1) from representations: the words after <bos>, <pad> after each
        report's <eos>. Greedy for beam 1, else a beam search of that width (default: the config's)."""
        beam = self.beam if beam is None else beam
        alpha = self.length_penalty if length_penalty is None else length_penalty
        if beam == 1:
            return self._write_greedy(global_, locals_)
        return self._write_beam(global_, locals_, beam, alpha)

    def _write_greedy(self, global_: torch.Tensor, locals_: torch.Tensor) -> torch.Tensor:
        batch, device = global_.shape[0], global_.device
        memory = torch.cat([global_[:, None], locals_], dim=1)
        past: list[torch.Tensor | None] = [None] * len(self.decoder.layers)
        word = torch.full((batch,), Vocabulary.bos_id, dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        out = torch.full((batch, self.max_words - 1), Vocabulary.pad_id, dtype=torch.long, device=device)
        for position in range(self.max_words - 1):
            word = self._next_word_logits(word, position, memory, past).argmax(dim=-1)
            word = torch.where(finished, torch.full_like(word, Vocabulary.pad_id), word)
            out[:, position] = word
            finished = finished | (word == Vocabulary.eos_id)
            if bool(finished.all()):
                break
        return out

    def _write_beam(self, global_: torch.Tensor, locals_: torch.Tensor, width: int, alpha: float) -> torch.Tensor:
        """Beam search: `width` partial reports per image, each step's candidates ranked by summed word
        log-probability; a finished report continues with <pad> at no cost. At the end each image's
        report is the beam of highest log-probability / ((5 + words) / 6) ** alpha (words with <eos>)."""
        batch, device, length = global_.shape[0], global_.device, self.max_words - 1
        memory = torch.cat([global_[:, None], locals_], dim=1).repeat_interleave(width, dim=0)
        past: list[torch.Tensor | None] = [None] * len(self.decoder.layers)
        word = torch.full((batch * width,), Vocabulary.bos_id, dtype=torch.long, device=device)
        scores = torch.full((batch, width), -math.inf, device=device)
        scores[:, 0] = 0.0  # one live beam at first: the others would repeat it
        finished = torch.zeros(batch, width, dtype=torch.bool, device=device)
        words = torch.zeros(batch, width, device=device)
        out = torch.full((batch, width, length), Vocabulary.pad_id, dtype=torch.long, device=device)
        offsets = torch.arange(batch, device=device)[:, None] * width
        vocab = self.word_out.out_features
        pad_only = torch.full((vocab,), -math.inf, device=device)  # a finished beam's one continuation
        pad_only[Vocabulary.pad_id] = 0.0
        for position in range(length):
            log_probs = torch.log_softmax(self._next_word_logits(word, position, memory, past).float(), dim=-1)
            log_probs = log_probs.view(batch, width, vocab)
            log_probs = torch.where(finished[..., None], pad_only, log_probs)
            scores, picked = (scores[..., None] + log_probs).view(batch, width * vocab).topk(width, dim=1)
            origin, word = picked // vocab, picked % vocab
            past = [p[(origin + offsets).view(-1)] for p in past]
            out = out.gather(1, origin[..., None].expand(-1, -1, length))
            finished, words = finished.gather(1, origin), words.gather(1, origin)
            out[:, :, position] = word
            words = words + (~finished).float()
            finished = finished | (word == Vocabulary.eos_id)
            word = word.view(-1)
            if bool(finished.all()):
                break
        best = (scores / ((5.0 + words) / 6.0) ** alpha).argmax(dim=1)
        return out[torch.arange(batch, device=device), best]


def build_networks(config: Mapping[str, Any]) -> dict[str, nn.Module]:
    return {NET_NAME: MedRAT(make_config(config))}


# --- losses (pure functions of the model's outputs; the recipe weighs them) ----------------------------

def positive_pairs(labels: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: i and j (i != j) are a positive pair when they share at least one positive label.

    `labels` (N, L) 0/1 over the label names, No Finding included: two all-normal studies share No
    Finding and are a positive pair, a normal and an abnormal study are not (unless both carry support
    devices, which CheXpert keeps beside No Finding). A study with no positive label at all has no
    positive pair."""
    present = (labels > 0.5).float()
    shared = (present @ present.T) > 0
    return shared & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 4, the multi-label supervised contrastive loss (Khosla et al.'s SupCon, positives by
    `positive_pairs`) over global representations z (N, d) of images and reports together, L2-normalised
    first: the mean over anchors i of -1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p/tau) / sum_{j != i}
    exp(z_i.z_j/tau)). Anchors without a positive are left out of the mean (0, with a graph, if none has
    one). Float32 whatever z's dtype."""
    z = F.normalize(z.float(), dim=1)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    similarity = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positive = positive_pairs(labels.to(z.device))
    count = positive.sum(dim=1)
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / count.clamp(min=1)
    anchors = count > 0
    if not bool(anchors.any()):
        return z.sum() * 0.0
    return per_anchor[anchors].mean()


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 5: binary cross-entropy of the classification head against the labels, present = 1
    (CheXpert's uncertain -1 and 0 count as absent), labels not given (NaN) left out. Float32."""
    known = ~torch.isnan(labels)
    targets = (torch.nan_to_num(labels, nan=0.0) == 1).float()
    per_entry = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    return (per_entry * known).sum() / known.sum().clamp(min=1)


def language_loss(word_logits: torch.Tensor, reports: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the teacher-forced words against the report's next tokens (<pad> left out)."""
    targets = reports[:, 1:]
    return F.cross_entropy(word_logits.flatten(0, 1).float(), targets.flatten(), ignore_index=Vocabulary.pad_id)


# --- the Captioning product -------------------------------------------------------------------------

def to_model_images(images: np.ndarray, model: MedRAT, like: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8 -> (B, 1, S, S) in [-1, 1] at the model's size, on `like`'s device and dtype."""
    x = torch.as_tensor(np.asarray(images), device=like.device).to(torch.float32)[:, None] / 127.5 - 1
    if tuple(x.shape[-2:]) != (model.image_size, model.image_size):
        x = F.interpolate(x, size=(model.image_size, model.image_size), mode="bilinear", antialias=True,
                          align_corners=False).clamp_(-1.0, 1.0)
    return x.to(like.dtype)


def caption(nets: Mapping[str, nn.Module], images: np.ndarray, beam: int | None = None) -> np.ndarray:
    """Report token ids (B, max_words - 1) int64 of 8-bit images (B, H, W): the image goes through the
    image stream and the shared encoder, the decoder writes from its global and local representations
    (beam search of width `beam`, default the config's; 1: greedy). Eval mode, no random numbers: a
    function of the images alone."""
    model = nets[NET_NAME]
    model.eval()
    first = next(model.parameters())
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"caption takes (B, H, W) uint8 images, not {images.dtype} {images.shape}")
    with torch.inference_mode():
        locals_, global_ = model.encode_images(to_model_images(images, model, first))
        return model.write(global_, locals_, beam=beam).cpu().numpy()


def decode_reports(ids: np.ndarray, vocabulary: Vocabulary) -> list[str]:
    return [vocabulary.decode(row) for row in np.asarray(ids)]


# Enough phantom reports for every word of the report grammar to pass the vocabulary's min count of 6.
UNTRAINED_REPORTS = 2000


def untrained_shape(size: int, seed: int, width: int | None = None) -> UntrainedShape:
    """An untrained MedRAT reads the chest X-ray labels; its vocabulary comes from phantom reports (the
    phantom's report grammar, no films drawn). `width`: the image CNN's first stage."""
    from factory.data.phantoms.cxr import phantom_reports

    vocabulary = Vocabulary.build(phantom_reports(seed, UNTRAINED_REPORTS))
    overrides: dict[str, Any] = {"image_size": size, "vocab_size": len(vocabulary), "num_labels": len(CXR_LABELS)}
    if width is not None:
        overrides["cnn_width"] = width
    return UntrainedShape(overrides, list(CXR_LABELS), vocabulary.to_json(),
                          f"; vocabulary from {UNTRAINED_REPORTS} phantom chest X-ray reports")


SPEC = GeneratorSpec(
    name="medrat",
    summary="chest X-ray image -> report, trained on unpaired images and reports (MedRAT)",
    make_config=make_config,
    build_networks=build_networks,
    untrained=untrained_shape,
    untrained_options=("width",),
    recipe="factory.train.recipes.medrat:MedratRecipe",
    products=(Captioning(caption=caption, decode_reports=decode_reports),),
)
