"""DUIIT training: CycleGAN translators into CT, trained jointly with a CT age regressor, engine-agnostic.

The paper's objective ("Discriminative Cross-Modal Data Augmentation for Medical Imaging
Applications", eqs. 1-3; docs/models.md), per source modality s:
    L = L_adv(D_t, G) + L_adv(D_s, F) + λcyc (|F(G(y)) - y|_1 + |G(F(x)) - x|_1) + λ L_pred(G, P)
    L_pred = sum over sources of l(P(G(y_i)), r_i) + sum over CTs of l(P(x_i), r_i)
with x real CTs, y source images (MRI or PET, other patients: unpaired), r physiological ages, l the
squared error, least-squares adversarial losses, λcyc = 10, λ = 0.001.

One `train_step` takes B real CTs and B images of each source (independent draws: the data are
unpaired) and, for each source s in order:
1. translator step (T_s: G and F together, as CycleGAN steps them with one optimiser): LSGAN losses
   of G(y) under D_t and F(x) under D_s (target 1), both cycle L1 losses times λcyc, and
   λ x the squared error of P on G(y) against y's ages. P and the discriminators are frozen, so
   their gradients only steer the translators: the age term is what makes the translation
   "discriminative".
2. discriminator step (D_s: D_t and D_s together): LSGAN, real -> 1 and translated -> 0, each half
   weighted (CycleGAN), the translated images drawn from an image pool of the last `pool_size` (50)
   translations per direction (Shrivastava et al.), filled from this step's translations.
Then one predictor step (P): squared error on the real CTs and on every source's translations of
this step (detached), in one batch, as P trains on the union of real and translated CTs.
Every backward runs inside `frozen(...)` of every engine it does not step (DeepSpeed ZeRO-2 needs it).

Learning rates: Adam 2e-4 (betas 0.5, 0.999) for translators and discriminators as in CycleGAN,
1e-3 for P (Adam's default betas: the paper names only Adam). The paper keeps each rate for the
first 100 of 200 epochs and then decays it linearly; here `learning_rates(step, total)` keeps it for
the first `lr_decay_start` (0.5) of the steps, then decays linearly to 1/(remaining steps) of it at
the last step. The runner sets the rates on the engines before each step.

Ages: P predicts (age - 55) / 20 (model config `age_centre`, `age_scale`), so its targets are O(1)
for the phantom's 20-90 years. Studies without an age (NaN) are left out of the age losses.

What the paper leaves open, and the choice made here:
- Units of λ: the paper reports its prediction errors as mean squared errors in years² (71-104),
  which is what λ = 0.001 was balanced against. Normalising ages divides that loss by 20² = 400, so
  the translators' age term is λ x age_scale² x (squared error in normalised units), i.e. λ x the
  squared error in years², as in the paper. P's own step minimises its squared error without λ:
  minimising λ L_pred over P is the same problem, and Adam's steps do not scale with a constant
  factor on the loss (it would only shrink the gradient towards Adam's epsilon).
- Sums in eq. 2 become batch means (the usual reading; a sum would tie λ to the batch size).
- Several sources: one CycleGAN (G, F, D_t, D_s) per source, sharing P, as the paper's
  MIX-CT-MRI-PET setting trains one predictor on CTs translated from both.
- P is in training mode (batch norm on batch statistics) in the translator step and sees the real
  CTs beside the translations there, so its normalisation matches P's own step; only the
  translations' error reaches the translators.
- No identity loss: CycleGAN's optional identity term assumes both domains share intensity meaning,
  which MRI/PET and CT do not.
- The discriminators and P see this step's translations made before the translator update, as
  CycleGAN's discriminators do.
The image pool holds the recipe's only state; it is saved with each checkpoint (per worker), and
every random choice of it comes from the step's seeded generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from factory.models import duiit
from factory.models.duiit import TARGET, lsgan_loss
from factory.models.registry import build_networks
from factory.train.engines import Engine, frozen

if TYPE_CHECKING:
    from factory.config import TrainDataConfig
    from factory.train.data import TrainingData


class ImagePool:
    """The last `size` generated images of one translation direction (CycleGAN's ImagePool).

    While the pool fills, each new image is stored and returned. Once full, each new image is, with
    probability 1/2, swapped for a random stored one (the stored one is returned, the new one kept),
    and otherwise returned as it is. A uniform and an index are drawn for every image whatever the
    branch, so the generator's stream does not depend on the pool's contents."""

    def __init__(self, size: int):
        self.size = size
        self.images: list[torch.Tensor] = []  # each (1, C, H, W), detached

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.size == 0:
            return images
        n = images.shape[0]
        coins = torch.rand(n, generator=generator, device=generator.device).tolist()
        picks = torch.randint(self.size, (n,), generator=generator, device=generator.device).tolist()
        out = []
        for i in range(n):
            image = images[i:i + 1].detach().clone()
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif coins[i] < 0.5:
                out.append(self.images[picks[i]].to(device=images.device, dtype=images.dtype))
                self.images[picks[i]] = image
            else:
                out.append(image)
        return torch.cat(out)

    def state(self) -> torch.Tensor | None:
        return torch.cat(self.images).cpu() if self.images else None

    def load(self, images: torch.Tensor) -> None:
        self.images = [image for image in images[: self.size].split(1)]


def linear_decay(step: int, total_steps: int, start_fraction: float) -> float:
    """1 for the first `start_fraction` of the steps, then linear towards 0 (1/(decay steps) at the last)."""
    start = int(start_fraction * total_steps)
    if step < start:
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - start))


def masked_mse(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the targets that are known (not NaN); 0 (with a graph) when none is."""
    known = torch.isfinite(target)
    if not known.any():
        return predicted.float().sum() * 0.0
    return F.mse_loss(predicted.float()[known], target.float()[known])


class DUIITRecipe:
    name = "duiit"
    progress_metrics = ("g_adv", "cycle", "p_loss")  # each source's and the predictor's, on the progress bar

    def __init__(self) -> None:
        self.config: dict[str, Any] | None = None
        self.pools: dict[str, ImagePool] = {}

    # --- data ------------------------------------------------------------------------------------

    def data_parts(self, overrides: Mapping[str, Any]) -> tuple[str, ...]:
        """Real CTs and each source modality's images, 2-D slices labelled with age (unpaired)."""
        return (TARGET, *duiit.make_config(overrides)["sources"])

    def data_info(self, parts: Mapping[str, Any], data: TrainDataConfig) -> dict[str, Any]:
        """Nothing is derived from the data: the intensity windows and the age normalisation are fixed
        in the model config, so bundles trained on different data convert alike."""
        return {}

    def model_config(self, overrides: Mapping[str, Any], data: TrainingData) -> dict[str, Any]:
        """The full model config for these parts: their common image size, checked to be age-labelled."""
        sizes = {name: tuple(part.images.shape[1:]) for name, part in data.parts.items()}
        if len(set(sizes.values())) != 1 or len(next(iter(sizes.values()))) != 3:
            raise ValueError(f"DUIIT trains on 2-D slices of one size in every part; got {sizes}")
        for name, part in data.parts.items():
            if tuple(part.label_names) != ("age",):
                raise ValueError(f"part {name!r} must be labelled with age, not {list(part.label_names)}")
        channels, height, width = next(iter(sizes.values()))
        if channels != 1 or height != width:
            raise ValueError(f"DUIIT expects square 1-channel slices; got {(channels, height, width)}")
        return duiit.make_config(overrides, image_size=int(height))

    def batch(self, data: TrainingData, indices: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Per part m: `m` images in [-1, 1] (B, 1, H, W) and `m_age` normalised ages (B,)."""
        config = self._config()
        out: dict[str, torch.Tensor] = {}
        for modality in (TARGET, *config["sources"]):
            part, index = data.parts[modality], torch.as_tensor(indices[modality], dtype=torch.long)
            out[modality] = duiit.to_model_space(part.images[index], modality, config)
            out[f"{modality}_age"] = duiit.normalise_age(part.labels[index, 0], config)
        return out

    # --- networks and optimisers ---------------------------------------------------------------------

    def build(self, model_config: Mapping[str, Any], seed: int | None = None) -> dict[str, nn.Module]:
        """T_{source}, D_{source} per source and P (config checked and completed first); empty pools."""
        self.config = duiit.make_config(model_config)
        self.pools = {key: ImagePool(self.config["pool_size"]) for key in self._pool_keys()}
        return build_networks(self.name, self.config, seed)

    def optimizer_config(self, name: str) -> dict[str, Any]:
        """Adam: 2e-4, betas (0.5, 0.999) for translators and discriminators; 1e-3 for P."""
        config, role = self._config(), duiit.role(name)
        return {"lr": config["lr"][role], "betas": tuple(config["betas"][role])}

    def learning_rates(self, step: int, total_steps: int) -> dict[str, float]:
        """Each network's rate at `step`: constant, then linear decay (see the module docstring)."""
        config = self._config()
        factor = linear_decay(step, total_steps, config["lr_decay_start"])
        return {name: config["lr"][duiit.role(name)] * factor for name in duiit.net_names(config)}

    # --- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The image pools (the recipe's only state)."""
        return {f"pool.{key}": images for key, pool in self.pools.items()
                if (images := pool.state()) is not None}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for key, pool in self.pools.items():
            if f"pool.{key}" in state:
                pool.load(state[f"pool.{key}"])

    def export_metadata(self, data: TrainingData) -> dict[str, Any]:
        """Age is the only label; no vocabulary. Per part: count and age range (production needs the
        model config's sources, windows and age normalisation, which the bundle stores anyway)."""
        parts = {}
        for name, part in data.parts.items():
            ages = part.labels[:, 0].numpy()
            known = ages[np.isfinite(ages)]
            parts[name] = {"count": len(part), "ages_known": int(known.size),
                           "age_min": round(float(known.min()), 2) if known.size else None,
                           "age_max": round(float(known.max()), 2) if known.size else None}
        return {"label_names": ["age"], "vocabulary": None, "training_data": {"parts": parts}}

    # --- the step ------------------------------------------------------------------------------------

    def train_step(self, engines: Mapping[str, Engine], batch: Mapping[str, torch.Tensor], step: int,
                   generator: torch.Generator) -> dict[str, float]:
        """Per source a translator step and a discriminator step, then one predictor step; returns losses.

        `step` is part of the recipe protocol; the schedule reaches the engines through
        `learning_rates`, set by the caller."""
        config = self._config()
        first = next(iter(engines["P"].parameters()))
        device, dtype = first.device, first.dtype
        ct = batch[TARGET].to(device=device, dtype=dtype)
        ct_age = batch[f"{TARGET}_age"].to(device=device, dtype=torch.float32)

        metrics: dict[str, torch.Tensor] = {}
        translations, translation_ages = [], []
        for source in config["sources"]:
            images = batch[source].to(device=device, dtype=dtype)
            ages = batch[f"{source}_age"].to(device=device, dtype=torch.float32)
            fake_ct, fake_source, losses = self._translator_step(engines, source, images, ages, ct)
            metrics.update(losses)
            metrics.update(self._discriminator_step(engines, source, images, ct, fake_ct, fake_source, generator))
            translations.append(fake_ct)
            translation_ages.append(ages)
        metrics.update(self._predictor_step(engines, ct, ct_age, translations, translation_ages))
        return {key: float(value) for key, value in metrics.items()}

    def _translator_step(self, engines, source, images, ages, ct):
        config, name = self.config, f"T_{source}"
        T, D, P = engines[name], engines[f"D_{source}"], engines["P"]
        with frozen(*(engine for key, engine in engines.items() if key != name)):
            out = T(images, ct)
            logits_ct, logits_source = D(out["fake_ct"], out["fake_source"])
            g_adv = lsgan_loss(logits_ct, real=True)
            f_adv = lsgan_loss(logits_source, real=True)
            cycle = (F.l1_loss(out["cycled_source"].float(), images.float())
                     + F.l1_loss(out["cycled_ct"].float(), ct.float()))
            # P sees the real CTs too (batch statistics as in its own step); only translations count.
            predicted = P(torch.cat([ct, out["fake_ct"]]))[ct.shape[0]:]
            age_error = masked_mse(predicted, ages)
            age_weight = config["lambda_pred"] * config["age_scale"] ** 2  # λ on squared error in years²
            T.backward(g_adv + f_adv + config["lambda_cyc"] * cycle + age_weight * age_error)
        T.step()
        losses = {f"{source}_g_adv": g_adv, f"{source}_f_adv": f_adv, f"{source}_cycle": cycle,
                  f"{source}_age": age_error}
        return out["fake_ct"].detach(), out["fake_source"].detach(), {k: v.detach() for k, v in losses.items()}

    def _discriminator_step(self, engines, source, images, ct, fake_ct, fake_source, generator):
        name = f"D_{source}"
        D = engines[name]
        pooled_ct = self.pools[f"ct_from_{source}"].query(fake_ct, generator)
        pooled_source = self.pools[f"{source}_from_ct"].query(fake_source, generator)
        n_ct, n_source = ct.shape[0], images.shape[0]
        with frozen(*(engine for key, engine in engines.items() if key != name)):
            logits_ct, logits_source = D(torch.cat([ct, pooled_ct]), torch.cat([images, pooled_source]))
            d_ct = 0.5 * (lsgan_loss(logits_ct[:n_ct], real=True) + lsgan_loss(logits_ct[n_ct:], real=False))
            d_source = 0.5 * (lsgan_loss(logits_source[:n_source], real=True)
                              + lsgan_loss(logits_source[n_source:], real=False))
            D.backward(d_ct + d_source)
        D.step()
        return {f"{source}_d_ct": d_ct.detach(), f"{source}_d_source": d_source.detach()}

    def _predictor_step(self, engines, ct, ct_age, translations, translation_ages):
        P = engines["P"]
        n = ct.shape[0]
        with frozen(*(engine for key, engine in engines.items() if key != "P")):
            predicted = P(torch.cat([ct, *translations]))
            targets = torch.cat([ct_age, *translation_ages])
            loss = masked_mse(predicted, targets)
            P.backward(loss)
        P.step()
        return {"p_loss": loss.detach(), "p_ct": masked_mse(predicted[:n].detach(), ct_age),
                "p_translated": masked_mse(predicted[n:].detach(), targets[n:])}

    # --- helpers ---------------------------------------------------------------------------------

    def _pool_keys(self) -> list[str]:
        return [key for source in self.config["sources"] for key in (f"ct_from_{source}", f"{source}_from_ct")]

    def _config(self) -> dict[str, Any]:
        if self.config is None:
            raise RuntimeError("call build(model_config) first")
        return self.config
