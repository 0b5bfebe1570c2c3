"""XRAY-GAN training steps (Chen & Wan; docs/models.md), engine-agnostic: CGAN (`CganRecipe`) and the
score-guided UCGAN (`UcganRecipe`). Both read chest X-ray studies (images and labels; reports unused).

CGAN, one `train_step` on a batch of B real studies (the paper's eq. 6, log loss):
1. D step: real images with their labels -> 1, and B fakes (G without gradients) -> 0. Each fake is
   conditioned on the labels of a real study of the batch (a seeded permutation), so conditioning
   labels follow the training data's label mix.
2. G step: B fresh fakes on freshly permuted labels, non-saturating loss (D(G(z|y)|y) -> 1), as
   Goodfellow et al. recommend in place of minimising log(1 - D).
Adam 2e-4, beta1 0.5 (§5.4).
Not the paper's, off by default (config keys; docs/models.md says why):
- `mismatch_weight` w > 0: Reed et al.'s matching-aware D. Each real image is also shown with the
  labels of another study of the batch (a seeded permutation) -> 0, and D's loss becomes
  real + (1 - w) x fake + w x mismatch. The mismatch term averages over the rows whose labels differ
  from their own (two "No Finding" studies swapped are no mismatch). Without it D can tell real from
  fake while ignoring the labels, and G is not pushed to draw them.
- `real_label` < 1: one-sided label smoothing (Salimans et al.) of D's target for real images, in
  the real and nowhere else (G's target stays 1).

UCGAN, one `train_step` on B real studies, the four networks stepped in turn (eq. 10-11):
1. D step: lambda x (log loss of real -> 1 and B fakes -> 0).
2. G step: delta x the non-saturating adversarial loss plus the regulariser L_reg of eq. 10 on B
   fresh fakes I_g and the real batch I_r:
     alpha x L_IS(C's class distributions on I_g)              (eq. 7; alpha < 0 maximises it)
   + beta  x MMD(C's class distributions on I_r and on I_g)     (eq. 8, Gaussian kernel)
   + gamma x (l_style(I^, I_r) + l_content(I^, I_g))            (eq. 10, I^ = T(I_g, I_r))
   + eta   x l_style(I_g, I_r)                                  (eq. 9)
   with every style and content loss over C's stage maps. C and T are frozen here. C normalises by
   batch statistics, as it does in its own step (in eval mode an early C, whose running statistics
   are still far from its batches', gives every image the same output, and no score reaches G), but
   its running statistics stay those of its real training batches (`statistics_kept`).
3. T step: gamma x (l_style(I^, I_r) + l_content(I^, I_g)) on the same (detached) fakes.
4. C step: tau x (cross-entropy on the real studies (ucgan.class_targets) + xi x cross-entropy on
   the step's fakes whose confidence (C's largest class probability, in this forward) reaches the
   threshold t, against their most likely class: pseudo-labels, fed to C in the same mini-batch).
   C normalises the fakes by their own batch statistics but leaves its running statistics to the
   real batches (`statistics_kept`): eval-mode C reads real films with real films' statistics.
Every backward runs inside `frozen(...)` of every engine it does not step (DeepSpeed ZeRO-2 needs it).

What the paper leaves open, and the choices made here:
- Which networks L_reg trains: G (and T for its style-transfer term), not C. The paper's scores
  guide the generator ("score-guided"); C learns from L_C alone, so the scores cannot teach C to
  agree with bad fakes.
- Update ratio: one step of each network per batch, the paper's final 1:1 rate (its footnote 3
  started at 3 G updates per D update and flipped it before settling at 1:1).
- Style pairs: eq. 9 compares the Gram matrices of fake i and real i of the same batch (the batch's
  order is random), summed over C's stages.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from factory.models.registry import build_networks
from factory.models.xraygan import cgan, ucgan
from factory.models.xraygan.scores import (inception_score_loss, mmd, pseudo_labels, style_loss,
                                           style_transfer_loss)
from factory.train.engines import Engine, frozen
from factory.train.recipes.common import ConstantAdamRecipe, label_prior

if TYPE_CHECKING:
    from factory.config import TrainDataConfig
    from factory.train.data import TrainingData

STUDIES = "studies"  # the training data part XRAY-GAN reads (factory.data.training)


def real_loss(logits: torch.Tensor, target: float = 1.0) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits, target, dtype=torch.float32))


def fake_loss(logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.zeros_like(logits, dtype=torch.float32))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against target distributions (B, L), averaged over the rows that have a target."""
    per_row = -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return per_row.sum() / (targets.sum(dim=1) > 0).sum().clamp(min=1)


def pseudo_label_loss(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the confident rows against their own most likely class (0, with a graph, when
    none is confident, so every rank runs the same backward), and the fraction of rows kept."""
    with torch.no_grad():
        classes, confidence = pseudo_labels(torch.softmax(logits.float(), dim=1))
        keep = confidence >= threshold
    per_row = F.cross_entropy(logits.float(), classes, reduction="none")
    return (per_row * keep).sum() / keep.sum().clamp(min=1), keep.float().mean()


def mismatch_loss(D: Engine, images: torch.Tensor, labels: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """D's log loss for real images shown with `wrong` labels -> fake, averaged over the rows whose
    `wrong` labels differ from their own (0, with a graph, when none does: every rank runs the same
    backward)."""
    differs = (wrong != labels).any(dim=1).float()
    per_row = F.binary_cross_entropy_with_logits(D(images, wrong).float(), torch.zeros_like(differs),
                                                 reduction="none")
    return (per_row * differs).sum() / differs.sum().clamp(min=1)


class _XrayganRecipe(ConstantAdamRecipe):
    """What both recipes share: the data part, batches, optimisers, constant rates, export."""

    name: str
    model: Any  # the model module (cgan or ucgan)

    def __init__(self) -> None:
        self.config: dict[str, Any] | None = None

    def build(self, model_config: Mapping[str, Any], seed: int | None = None) -> dict[str, nn.Module]:
        self.config = self.model.make_config(model_config)
        return build_networks(self.name, self.config, seed)

    def data_parts(self, overrides: Mapping[str, Any]) -> tuple[str, ...]:
        """One part: labelled chest X-ray studies."""
        return (STUDIES,)

    def data_info(self, parts: Mapping[str, Any], data: TrainDataConfig) -> dict[str, Any]:
        """Nothing beyond the studies: no vocabulary."""
        return {}

    def model_config(self, overrides: Mapping[str, Any], data: TrainingData) -> dict[str, Any]:
        part = data.parts[STUDIES]
        return self.model.make_config(overrides, num_labels=len(part.label_names), image_size=int(part.images.shape[-1]))

    def batch(self, data: TrainingData, indices: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Images (B, 1, H, W) in [-1, 1] and 0/1 labels (uncertain and unmentioned count as absent)."""
        part, index = data.parts[STUDIES], indices[STUDIES]
        present = torch.nan_to_num(part.labels[index], nan=0.0).eq(1.0).float()
        return {"image": part.images[index] * 2 - 1, "labels": present}

    def export_metadata(self, data: TrainingData) -> dict[str, Any]:
        part = data.parts[STUDIES]
        return {"label_names": list(part.label_names), "vocabulary": None,
                "training_data": {"label_prior": label_prior(part)}}

    @staticmethod
    def _place(engines: Mapping[str, Engine], batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        first = next(iter(engines["G"].parameters()))
        return (batch["image"].to(device=first.device, dtype=first.dtype),
                batch["labels"].to(device=first.device, dtype=first.dtype))

    def _noise(self, n: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self._config()["z_dim"], generator=generator, device=generator.device)
        return z.to(device=like.device, dtype=like.dtype)


class CganRecipe(_XrayganRecipe):
    name = "xraygan-cgan"
    model = cgan

    def train_step(self, engines: Mapping[str, Engine], batch: Mapping[str, torch.Tensor], step: int,
                   generator: torch.Generator) -> dict[str, float]:
        """One D step and one G step; `step` is part of the protocol (no schedule here)."""
        config = self._config()
        weight = float(config["mismatch_weight"])
        G, D = engines["G"], engines["D"]
        images, labels = self._place(engines, batch)
        n = images.shape[0]

        with torch.no_grad():
            fake_labels = self._permuted(labels, generator)
            fake = G(self._noise(n, images, generator), fake_labels)
        metrics = {}
        with frozen(G):
            d_real, d_fake = real_loss(D(images, labels), config["real_label"]), fake_loss(D(fake, fake_labels))
            d_loss = d_real + (1 - weight) * d_fake
            if weight:  # drawn only here, so the paper's steps keep their random stream
                d_mismatch = mismatch_loss(D, images, labels, self._permuted(labels, generator))
                d_loss = d_loss + weight * d_mismatch
                metrics["d_mismatch"] = d_mismatch.item()
            D.backward(d_loss)
        D.step()

        fake_labels = self._permuted(labels, generator)
        with frozen(D):
            g_loss = real_loss(D(G(self._noise(n, images, generator), fake_labels), fake_labels))
            G.backward(g_loss)
        G.step()
        return {"d_real": d_real.item(), "d_fake": d_fake.item(), "g_adv": g_loss.item(), **metrics}

    @staticmethod
    def _permuted(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        order = torch.randperm(labels.shape[0], generator=generator, device=generator.device)
        return labels[order.to(labels.device)]


class UcganRecipe(_XrayganRecipe):
    name = "xraygan-ucgan"
    model = ucgan

    def batch(self, data: TrainingData, indices: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """As CGAN's, plus C's cross-entropy targets (ucgan.class_targets)."""
        batch = super().batch(data, indices)
        return {**batch, "targets": ucgan.class_targets(batch["labels"], data.parts[STUDIES].label_names)}

    def optimizer_config(self, name: str) -> dict[str, Any]:
        """Adam with the paper's rates (G 5e-4, D 1e-3, C 5e-4) and L2 weight decay 1e-3."""
        return {**super().optimizer_config(name), "weight_decay": float(self._config()["weight_decay"])}

    def train_step(self, engines: Mapping[str, Engine], batch: Mapping[str, torch.Tensor], step: int,
                   generator: torch.Generator) -> dict[str, float]:
        """D, G, T and C steps in turn (module docstring); `step` is part of the protocol."""
        config = self._config()
        G, D, C, T = (engines[name] for name in ucgan.NET_NAMES)
        images, _ = self._place(engines, batch)
        targets = batch["targets"].to(device=images.device, dtype=torch.float32)
        n = images.shape[0]
        if n < 2:
            raise ValueError("a UCGAN batch needs at least 2 studies (the MMD compares pairs)")

        with torch.no_grad():
            fake = G(self._noise(n, images, generator))
        with frozen(G, C, T):
            d_real, d_fake = real_loss(D(images)), fake_loss(D(fake))
            D.backward(config["lambda"] * (d_real + d_fake))
        D.step()

        with frozen(D, C, T), statistics_kept(C.module):
            fake = G(self._noise(n, images, generator))
            g_adv = real_loss(D(fake))
            with torch.no_grad():
                real_logits, real_maps = C(images, maps=True)
            fake_logits, fake_maps = C(fake, maps=True)
            fake_probs = torch.softmax(fake_logits.float(), dim=1)
            score_is = inception_score_loss(fake_probs)
            score_mmd = mmd(torch.softmax(real_logits.float(), dim=1), fake_probs, config["mmd_bandwidth"])
            style = style_loss(fake_maps, real_maps)
            _, transferred_maps = C(T(fake, images), maps=True)
            transfer = style_transfer_loss(transferred_maps, real_maps, fake_maps, config["content_layer"])
            G.backward(config["delta"] * g_adv + config["alpha"] * score_is + config["beta"] * score_mmd
                       + config["gamma"] * transfer + config["eta"] * style)
        G.step()

        fake = fake.detach()
        with frozen(G, D, C), statistics_kept(C.module):
            with torch.no_grad():
                fake_maps = C(fake, maps=True)[1]
            t_loss = style_transfer_loss(C(T(fake, images), maps=True)[1], real_maps, fake_maps, config["content_layer"])
            T.backward(config["gamma"] * t_loss)
        T.step()

        with frozen(G, D, T):
            c_real = soft_cross_entropy(C(images), targets)
            # Running statistics from real batches alone (module docstring, step 4).
            with statistics_kept(C.module):
                fake_logits = C(fake)
            c_fake, kept = pseudo_label_loss(fake_logits, config["threshold"])
            C.backward(config["tau"] * (c_real + config["xi"] * c_fake))
        C.step()
        losses = {"d_real": d_real, "d_fake": d_fake, "g_adv": g_adv, "g_is": score_is, "g_mmd": score_mmd,
                  "g_style": style, "g_transfer": transfer, "t_transfer": t_loss, "c_real": c_real, "c_fake": c_fake,
                  "c_kept": kept}
        return {key: value.item() for key, value in losses.items()}


@contextlib.contextmanager
def statistics_kept(module: nn.Module) -> Iterator[None]:
    """Batch norm layers normalise by the batch as in training, but leave their running statistics as
    they are (momentum 0 for the block): the classifier as a loss network of G and T. Its running
    statistics, which production's pseudo-labels use, stay those of its own training batches."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
