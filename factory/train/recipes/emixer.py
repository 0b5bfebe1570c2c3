"""EMIXER training step: two discriminator steps per generator step, engine-agnostic.

One `train_step` call takes a batch of B real studies and does:
0. G draws B fakes and F writes one free-running report of each (straight-through Gumbel words), both
   graphs kept: the step's only generated batch and only free-running decode.
1. `d_steps` (2) discriminator steps, each on its own 1/d_steps slice of the batch and of those fakes
   (detached; the reports as ids): D_image (hinge real/fake with projection for labelled samples, plus
   rotation cross-entropy on rotated real images, weight `rotation_weight_d`), D_report (hinge on real
   vs F's reports) and D_joint (hinge; its fakes are half generated pairs and half real images with
   another study's report, so it also learns whether a report fits its image).
2. one F step: teacher-forced maximum likelihood on the real pairs (word cross-entropy and the
   sentence decoder's STOP cross-entropy), `encoder_label_weight` x the binary cross-entropy of F's
   label head on the labelled real images, and the report and joint adversarial losses of its reports
   of the fakes against the discriminators as just stepped. F reads the fakes from a detached copy
   that requires grad, so F's backward leaves the gradient of those terms with respect to the images
   there.
3. one G step: the hinge term of D_image (projection included) and the rotation loss on rotated fakes
   (weight `rotation_weight_g`, the paper's alpha, as in self-supervised GANs), plus the report and
   joint terms through the image gradient step 2 left (the chain rule through F, without a second
   pass through F and the report discriminators); with `label_consistency_weight` > 0 (not in the
   paper, off by default) also the binary cross-entropy of F's label head on the labelled fakes against
   their conditioning labels (inside F's backward when F's encoder and head are frozen, so it trains
   no F weight; else read apart in this step).
The paper's F encoder is a DenseNet pretrained as a chest X-ray classifier: `start_from` loads such a
classifier (trained here from scratch) into F's encoder and label head; without one, the label head
teaches F's encoder the labels while it trains (without it F learns to read findings only through the
few finding words of the likelihood term), and the likelihood term is what teaches F to write at all.
Each backward runs inside `frozen(...)` of every engine it does not step (DeepSpeed ZeRO-2 needs it).

Hinge loss is used for all three discriminators (as in SAGAN/BigGAN, on which EMIXER's image
networks are built) instead of the paper's log loss: it is the better-tested choice for
spectral-normalised projection discriminators.

Gradients through discrete words: straight-through Gumbel-softmax. In the G and F steps F writes
its report free-running; at each word the Gumbel-max sample is fed forward as an exact one-hot
vector (and fed back into the word LSTM as its embedding), while the backward pass uses the
gradient of softmax((logits + gumbel) / tau). Why: (a) the discriminators see one-hot words for
real and generated reports alike, so they cannot win by spotting soft, low-entropy distributions,
which is what defeats plain soft-distribution inputs; (b) the gradient is low-variance and flows
end to end, from D_report and D_joint through every word into F and, through F's image encoder,
into G, which the paper's end-to-end objective needs; REINFORCE-style estimators (SeqGAN) would need
rollouts and baselines and are far noisier. The bias of the straight-through estimator is kept
small by tau = 1 and is the accepted price.

Partial labels: the batch's `labelled` mask (see `labelled_mask`, deterministic per sample from the
config's `label_fraction` and `label_seed`) decides which real samples' labels exist. Unlabelled real
samples get no projection term in D_image: they train it only through the unconditional real/fake
logit and the rotation loss. Fakes are conditioned on label vectors drawn from the batch's labelled
samples; a batch with none labelled conditions G on the zero vector and uses no projection term at
all, so neither the label embeddings of G nor the projection of D_image learn from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from factory.data.text.vocab import Vocabulary
from factory.models import emixer
from factory.models.registry import build_networks
from factory.train.engines import Engine, frozen
from factory.train.recipes.common import ConstantAdamRecipe, TrainingVocabulary, label_prior

if TYPE_CHECKING:
    from factory.models.bundle import Bundle
    from factory.config import TrainDataConfig
    from factory.train.data import TrainingData

STUDIES = "studies"  # the one training data part EMIXER reads (factory.data.training)


def labelled_mask(indices: Iterable[int], fraction: float, seed: int) -> np.ndarray:
    """Whether each dataset index has its labels used: a fixed coin per (seed, index), so a sample
    is labelled or not whatever the batch, worker or epoch it lands in."""
    return np.array([np.random.default_rng([seed, int(i)]).random() < fraction for i in indices], dtype=bool)


def rotate(images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image i of (B, C, H, W) by k[i] quarter turns."""
    rotations = torch.stack([torch.rot90(images, r, dims=(2, 3)) for r in range(4)])
    return rotations[k, torch.arange(images.shape[0], device=images.device)]


def hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def report_nll(stop_logits: torch.Tensor, word_logits: torch.Tensor, reports: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean word cross-entropy over non-pad target tokens, and STOP cross-entropy over sentence rows
    (a row whose first token is <pad> does not exist: its STOP target is 1)."""
    pad = Vocabulary.pad_id
    words = F.cross_entropy(word_logits.flatten(0, 2).float(), reports.flatten(), ignore_index=pad,
                            reduction="sum") / (reports != pad).sum().clamp(min=1)
    stops = F.binary_cross_entropy_with_logits(stop_logits.float(), (reports[:, :, 0] == pad).float())
    return words, stops


def encoder_label_loss(logits: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of F's label head on the labelled real images (0 when none is labelled,
    with a graph, so every rank runs the same backward)."""
    targets = torch.nan_to_num(labels.float(), nan=0.0)  # unlabelled rows may hold NaN; they weigh 0
    per_sample = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").mean(dim=1)
    return torch.where(labelled, per_sample, torch.zeros_like(per_sample)).sum() / labelled.sum().clamp(min=1)


class EmixerRecipe(TrainingVocabulary, ConstantAdamRecipe):
    name = "emixer"
    net_names: tuple[str, ...] = emixer.NET_NAMES
    progress_metrics = ("d_image", "g_image", "f_word_nll")  # what the training progress bar shows

    def __init__(self) -> None:
        self.config: dict[str, Any] | None = None
        self.started_from: dict[str, Any] | None = None

    def start_from(self, nets: Mapping[str, nn.Module], bundle: Bundle, data: TrainingData) -> dict[str, Any]:
        """Load a chest X-ray classifier bundle (recipe "judge", factory.models.judge) into F's encoder and
        label head, as the paper's F starts from a pretrained classifier; returns what is recorded of it.

        The classifier must be the torchvision ResNet that `f_encoder` names, at the training image size,
        over the training labels, reading its films normalised as `f_input_mean` / `f_input_std` say.
        Raises ValueError otherwise."""
        config = self._config()
        meta, judge = bundle.metadata, bundle.model_config
        if meta["recipe"] != "judge":
            raise ValueError(f"F's encoder starts from a classifier bundle (recipe 'judge'), not {meta['recipe']!r}")
        wanted = {"arch": config["f_encoder"], "image_size": config["image_size"], "channels": config["channels"],
                  "input_mean": config["f_input_mean"], "input_std": config["f_input_std"]}
        found = {key: judge.get(key) for key in wanted}
        if found != wanted:
            raise ValueError(f"classifier {meta['bundle_id']} has {found}; F's encoder needs {wanted} "
                             "(model keys f_encoder, image_size, channels, f_input_mean, f_input_std)")
        label_names = list(data.parts[STUDIES].label_names)
        if list(bundle.label_names) != label_names:
            raise ValueError(f"classifier {meta['bundle_id']} reads {list(bundle.label_names)}, "
                             f"the training data has {label_names}")
        net, F_ = bundle.nets["judge"], nets["F"]
        F_.encoder.net.load_state_dict(net.trunk.state_dict())
        F_.label_head.load_state_dict(net.head[-1].state_dict())
        self.started_from = {"bundle_id": meta["bundle_id"], "url": bundle.url,
                             "macro_auc": meta["metrics"].get("macro_auc"),
                             "training_data": meta["training_data"].get("description", ""),
                             "frozen": config["f_encoder_frozen"]}
        return self.started_from

    def build(self, model_config: Mapping[str, Any], seed: int | None = None) -> dict[str, nn.Module]:
        """Networks by name: G, F, D_image, D_report, D_joint (config checked and completed first)."""
        self.config = emixer.make_config(model_config)
        return build_networks(self.name, self.config, seed)

    def data_parts(self, overrides: Mapping[str, Any]) -> tuple[str, ...]:
        """One part: chest X-ray studies with labels and reports."""
        return (STUDIES,)

    def data_info(self, parts: Mapping[str, Any], data: TrainDataConfig) -> dict[str, Any]:
        """The report vocabulary, built once from every training report (words seen min_word_count times)."""
        cache = parts[STUDIES]
        texts = [str(r) for r, has in zip(cache.reports, cache.has_report) if has]
        return {"vocabulary": Vocabulary.build(texts, min_count=data.min_word_count).to_json()}

    def model_config(self, overrides: Mapping[str, Any], data: TrainingData) -> dict[str, Any]:
        """The full model config for training data with this vocabulary, labels and image size."""
        part = data.parts[STUDIES]
        return emixer.make_config(overrides, vocab_size=len(self._vocabulary(data)),
                                  num_labels=len(part.label_names), image_size=int(part.images.shape[-1]))

    def batch(self, data: TrainingData, indices: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """A train_step batch of the sampled studies: images (B, 1, H, W) in [0, 1] -> [-1, 1], labels with
        CheXpert values (uncertain and unmentioned count as absent)."""
        part, index = data.parts[STUDIES], indices[STUDIES]
        present = torch.nan_to_num(part.labels[index], nan=0.0).eq(1.0).float()
        return make_batch(part.images[index] * 2 - 1, present, [part.reports[i] for i in index], index,
                          self._vocabulary(data), self._config())

    # optimizer_config, learning_rates, state_dict: ConstantAdamRecipe's (Adam at the config's `lr`,
    # 5e-5 for G and F and 2e-4 for the discriminators by default; no state between steps).

    def export_metadata(self, data: TrainingData) -> dict[str, Any]:
        """Label names, the vocabulary and the training labels' prior (combinations and their shares)."""
        part = data.parts[STUDIES]
        training_data: dict[str, Any] = {"label_prior": label_prior(part)}
        if self.started_from is not None:
            training_data["f_encoder_started_from"] = self.started_from
        return {"label_names": list(part.label_names), "vocabulary": data.info["vocabulary"],
                "training_data": training_data}

    def train_step(self, engines: Mapping[str, Engine], batch: Mapping[str, torch.Tensor], step: int,
                   generator: torch.Generator) -> dict[str, float]:
        """Two discriminator steps and one generator (F, then G) step on one set of fakes; returns mean losses.

        `step` is part of the recipe protocol; EMIXER's schedule does not change with it."""
        config = self._config()
        first = next(iter(engines["G"].parameters()))
        device, dtype = first.device, first.dtype
        images = batch["image"].to(device=device, dtype=dtype)
        labels = batch["labels"].to(device=device, dtype=dtype)
        labelled = batch["labelled"].to(device=device, dtype=torch.bool)
        reports = batch["report"].to(device=device, dtype=torch.long)
        if images.shape[0] < config["d_steps"]:
            raise ValueError(f"a batch needs at least d_steps={config['d_steps']} samples")

        # One set of fakes and one free-running report each per step, their graphs kept for the G and F
        # step: the straight-through words are exact one-hot samples of F's word distribution at tau, so
        # the discriminators train on their ids as they would on separately sampled reports.
        n = images.shape[0]
        fake, fake_labels, fake_labelled = self._fakes(engines, labels, labelled, n, generator)
        fake_in = fake.detach().requires_grad_(True)  # F's input: its gradient is what G gets through F
        words, read_labels = engines["F"](fake_in, mode="gumbel", temperature=config["gumbel_temperature"],
                                          generator=generator, with_labels=True)
        fakes = Fakes(fake.detach(), fake_labels, fake_labelled, words.detach().argmax(dim=-1))

        metrics: dict[str, torch.Tensor] = {}
        slices = torch.arange(n, device=device).chunk(config["d_steps"])
        for part in slices:
            for key, value in self._discriminator_step(
                    engines, images[part], labels[part], labelled[part], reports[part], fakes.part(part),
                    generator).items():
                metrics[key] = metrics.get(key, 0.0) + value.detach() / len(slices)
        metrics.update(self._generator_step(engines, images, labels, labelled, reports, fake, fake_in, words,
                                            read_labels, fakes, generator))
        return {key: float(value) for key, value in metrics.items()}

    def _fakes(self, engines: Mapping[str, Engine], labels: torch.Tensor, labelled: torch.Tensor, n: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n fake images with their condition labels and whether those labels count."""
        device, dtype = labels.device, labels.dtype
        pool = labels[labelled]
        if len(pool):
            pick = torch.randint(len(pool), (n,), generator=generator, device=generator.device).to(device)
            fake_labels, fake_labelled = pool[pick], torch.ones(n, dtype=torch.bool, device=device)
        else:
            fake_labels = torch.zeros(n, labels.shape[1], dtype=dtype, device=device)
            fake_labelled = torch.zeros(n, dtype=torch.bool, device=device)
        z = torch.randn(n, emixer.z_dim(self.config), generator=generator, device=generator.device)
        return engines["G"](z.to(device=device, dtype=dtype), fake_labels), fake_labels, fake_labelled

    def _quarter_turns(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return torch.randint(4, (n,), generator=generator, device=generator.device).to(device)

    def _discriminator_step(self, engines, images, labels, labelled, reports, fakes: Fakes,
                            generator) -> dict[str, torch.Tensor]:
        config, n = self.config, images.shape[0]
        G, F_, D_image, D_report, D_joint = (engines[name] for name in self.net_names)
        fake, fake_reports = fakes.images, fakes.reports

        turns = self._quarter_turns(n, generator, images.device)
        with frozen(G, F_, D_report, D_joint):
            logits, rotation = D_image(
                torch.cat([images, fake, rotate(images, turns)]),
                torch.cat([labels, fakes.labels, torch.zeros_like(labels)]),
                torch.cat([labelled, fakes.labelled, torch.zeros_like(labelled)]))
            adversarial = hinge_d(logits[:n], logits[n:2 * n])
            rotation_loss = F.cross_entropy(rotation[2 * n:].float(), turns)
            D_image.backward(adversarial + config["rotation_weight_d"] * rotation_loss)
        D_image.step()

        with frozen(G, F_, D_image, D_joint):
            logits = D_report(torch.cat([reports, fake_reports]))
            report_loss = hinge_d(logits[:n], logits[n:])
            D_report.backward(report_loss)
        D_report.step()

        with frozen(G, F_, D_image, D_report):
            # Fakes: generated pairs, and real images with another study's report (mismatched); each
            # real image is read once for both of its pairs.
            own = torch.arange(n, device=images.device)
            logits = D_joint(torch.cat([images, fake]), torch.cat([reports, fake_reports, reports.roll(1, dims=0)]),
                             image_index=torch.cat([own, own + n, own]))
            joint_loss = F.relu(1 - logits[:n]).mean() + 0.5 * (
                F.relu(1 + logits[n:2 * n]).mean() + F.relu(1 + logits[2 * n:]).mean())
            D_joint.backward(joint_loss)
        D_joint.step()
        return {"d_image": adversarial, "d_rotation": rotation_loss, "d_report": report_loss, "d_joint": joint_loss}

    def _generator_step(self, engines, images, labels, labelled, reports, fake, fake_in, words, read_labels,
                        fakes: Fakes, generator) -> dict[str, torch.Tensor]:
        config, n = self.config, images.shape[0]
        G, F_, D_image, D_report, D_joint = (engines[name] for name in self.net_names)
        extra: dict[str, torch.Tensor] = {}

        # F: likelihood of the real reports, its label head on the real labels, and the report and joint
        # adversarial terms of its words for the fakes (against the discriminators as just stepped).
        # Those terms are G's too: F's backward leaves their gradient with respect to the fake images in
        # fake_in.grad, and G takes it from there (the chain rule through F, without a second pass).
        # A frozen encoder reads the real images once for all of this step's likelihood updates.
        real_features = None
        if config["f_encoder_frozen"]:
            with torch.no_grad():
                real_features = F_(images, mode="features")
        with frozen(G, D_image, D_report, D_joint):
            stop_logits, word_logits, label_logits = F_(images, reports, features=real_features)
            word_nll, stop_nll = report_nll(stop_logits, word_logits, reports)
            label_bce = encoder_label_loss(label_logits, labels, labelled)
            report_loss = -D_report(words).mean()
            joint_loss = -D_joint(fake_in, words).mean()
            adversarial = config["report_weight"] * report_loss + config["joint_weight"] * joint_loss
            consistency = None
            if config["label_consistency_weight"]:
                consistency = encoder_label_loss(read_labels, fakes.labels, fakes.labelled)
                extra["g_label_consistency"] = consistency.detach()
            # G's alone. With F's encoder and label head frozen it goes into F's backward, which then gives
            # it no weight but leaves its image gradient on fake_in; otherwise G's step reads it apart.
            joins_f = consistency is not None and config["f_encoder_frozen"]
            F_.backward(config["mle_weight"] * (word_nll + stop_nll) + config["encoder_label_weight"] * label_bce
                        + adversarial + (config["label_consistency_weight"] * consistency if joins_f else 0.0))
        F_.step()
        through_f = fake_in.grad if fake_in.grad is not None else torch.zeros_like(fake_in)

        turns = self._quarter_turns(n, generator, images.device)
        with frozen(F_, D_image, D_report, D_joint):
            logits, rotation = D_image(torch.cat([fake, rotate(fake, turns)]),
                                       torch.cat([fakes.labels, torch.zeros_like(fakes.labels)]),
                                       torch.cat([fakes.labelled, torch.zeros_like(fakes.labelled)]))
            image_loss = -logits[:n].mean()
            rotation_loss = F.cross_entropy(rotation[n:].float(), turns)
            # (fake * through_f).sum() has gradient through_f with respect to the images.
            loss = image_loss + config["rotation_weight_g"] * rotation_loss + (fake * through_f).sum()
            if consistency is not None and not joins_f:  # F frozen here: its label head reads G's images
                read = F_(fake, mode="labels")
                loss = loss + config["label_consistency_weight"] * encoder_label_loss(read, fakes.labels,
                                                                                      fakes.labelled)
            G.backward(loss)
        G.step()
        for _ in range(config["mle_steps"] - 1):  # more teacher-forced F updates on the same real pairs
            with frozen(G, D_image, D_report, D_joint):
                stop_logits, word_logits, label_logits = F_(images, reports, features=real_features)
                last_word_nll, last_stop_nll = report_nll(stop_logits, word_logits, reports)
                F_.backward(config["mle_weight"] * (last_word_nll + last_stop_nll)
                            + config["encoder_label_weight"] * encoder_label_loss(label_logits, labels, labelled))
            F_.step()
            extra.update(f_word_nll_last=last_word_nll.detach(), f_stop_nll_last=last_stop_nll.detach())
        return {"g_image": image_loss.detach(), "g_rotation": rotation_loss.detach(),
                "g_report": report_loss.detach(), "g_joint": joint_loss.detach(),
                "f_word_nll": word_nll.detach(), "f_stop_nll": stop_nll.detach(), "f_label_bce": label_bce.detach(),
                **extra}


@dataclass
class Fakes:
    """A step's fake images, their condition labels, whether those count, and F's reports of them (ids),
    all detached: what the discriminators train on."""

    images: torch.Tensor
    labels: torch.Tensor
    labelled: torch.Tensor
    reports: torch.Tensor

    def part(self, index: torch.Tensor) -> Fakes:
        return Fakes(self.images[index], self.labels[index], self.labelled[index], self.reports[index])


def make_batch(images: torch.Tensor, labels: torch.Tensor, reports: Sequence[str], indices: Iterable[int],
               vocabulary: Vocabulary, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A train_step batch from images (B, 1, H, W) in [-1, 1], 0/1 labels (B, L), report texts and
    the samples' dataset indices (which fix the labelled mask)."""
    encoded = np.stack([vocabulary.encode_sentences(text, config["max_sentences"], config["max_words"])
                        for text in reports])
    mask = labelled_mask(indices, config["label_fraction"], config["label_seed"])
    return {"image": images, "labels": labels.float(), "labelled": torch.from_numpy(mask),
            "report": torch.from_numpy(encoded)}
