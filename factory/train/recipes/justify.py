"""Justify's training (Spinks & Moens; docs/models.md), engine-agnostic: the paper's stages in order
within one run, each a block of steps of the model config's `schedule`
({"arae": n1, "stage1": n2, "stage2": n3, "inverse": n4}). Step s belongs to the stage whose block
holds it, so a run resumed from a checkpoint continues the stage it was in, and a later stage starts
from the networks the earlier ones left (they are in every checkpoint). A run may stop before the
schedule's end (`steps` smaller than its sum) and be started again with more steps to train the
next stages; its bundle records the stages it completed. Every network is in every bundle.

One `train_step` on B chest X-ray studies (image, primary label as the diagnosis, its captions; one
caption per study drawn for the step):
- arae (§3.1, Zhao et al.): AE step: cross-entropy of the diagnosis and the caption words decoded from
  the code (plus Gaussian code noise) + `encoder_adversarial` x Cz(code) (the critic's gradient into
  the encoder, as ARAE's); then `critic_steps` critic steps, Cz(Gz(s)) - Cz(code) with the WGAN-GP
  gradient penalty; then one Gz step, -Cz(Gz(s)).
- stage1 (§3.2, StackGAN-v1): r = [code of the caption (AE, fixed), noise]. D1 step, matching-aware:
  real with its r -> 1, real with another study's r and G1(r) -> 0 (each weighted `wrong_weight`);
  G1 step: D1(G1(r), r) -> 1 (+ CA's KL term when on). Images at stage1_size (area-downsampled).
- stage2: the same for G2 and D2 at image_size, G2 reading G1(r) (G1 fixed).
- inverse (§3.3, eq. 1): log10(epoch + 1) x CE(diagnosis decoded from I(x)'s code) + MSE(G1(I(x)), x)
  + MSE(code part of I(G1(r)), code), the epoch counted from the start of the stage (studies seen
  over the training set's size; the first epoch has weight 0).
Networks of finished stages run in eval mode as fixed functions; every backward runs inside
`frozen(...)` of every engine it does not step (DeepSpeed ZeRO-2 needs it).

What departs from the paper, and why: the critic's Lipschitz constraint is WGAN-GP's penalty instead
of ARAE's weight clipping (ZeRO keeps a master copy of the weights, which clipping the module's would
not reach); ARAE's annealing of the code noise and StackGAN's halving of the learning rate every 100
epochs are not scheduled (constant rates); captions are drawn per step rather than each being a
training example.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from factory.data.text.vocab import Vocabulary
from factory.models.justify import arae
from factory.models.justify.config import NET_NAMES, STAGE_NETS, STAGES, make_config, stage_at
from factory.models.registry import build_networks
from factory.train.engines import Engine, frozen
from factory.train.recipes.common import ConstantAdamRecipe, TrainingVocabulary, label_prior

if TYPE_CHECKING:
    from factory.config import TrainDataConfig
    from factory.train.data import TrainingData

STUDIES = "studies"
NO_FINDING = "No Finding"


def primary_labels(labels: torch.Tensor, label_names: tuple[str, ...]) -> torch.Tensor:
    """Each study's diagnosis: its first positive finding in label order, else No Finding (B,)."""
    names = list(label_names)
    if NO_FINDING not in names:
        raise ValueError(f"the diagnoses need a {NO_FINDING!r} label; the data has {names}")
    findings = torch.tensor([n != NO_FINDING for n in names])
    positive = (torch.nan_to_num(labels, nan=0.0) == 1) & findings
    first = positive.float().argmax(dim=1)
    return torch.where(positive.any(dim=1), first, torch.full_like(first, names.index(NO_FINDING)))


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits, target, dtype=torch.float32))


def gradient_penalty(critic: Engine, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """WGAN-GP: (||grad_c Cz(c)|| - 1)^2 at random points between real and fake codes. The inner
    gradient goes through the plain module: only the outer backward (the engine's) may reach the
    parameters, since DeepSpeed ends its backward (the gradient reduction) at the first one that runs
    through the engine's forward."""
    t = torch.rand(real.shape[0], 1, generator=generator, device=generator.device).to(real)
    mixed = (t * real + (1 - t) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic.module(mixed).sum(), mixed, create_graph=True)
    return (grad.float().norm(dim=1) - 1).pow(2).mean()


def diagnosis_weight(epoch: int) -> float:
    """Eq. 1's log10(epoch + 1)."""
    return math.log10(epoch + 1)


class JustifyRecipe(TrainingVocabulary, ConstantAdamRecipe):
    name = "justify"
    progress_metrics = ("stage", "ae_nll", "d1", "g1", "d2", "g2", "i_total")

    def __init__(self) -> None:
        self.config: dict[str, Any] | None = None
        self.studies = 0  # the training set's size (an epoch of eq. 1)
        self.steps_done = 0  # what the bundle's stages_trained is read from; kept in checkpoints

    def build(self, model_config: Mapping[str, Any], seed: int | None = None) -> dict[str, nn.Module]:
        self.config = make_config(model_config)
        return build_networks(self.name, self.config, seed)

    def data_parts(self, overrides: Mapping[str, Any]) -> tuple[str, ...]:
        """One part: chest X-ray studies with labels and reports."""
        return (STUDIES,)

    def data_info(self, parts: Mapping[str, Any], data: TrainDataConfig) -> dict[str, Any]:
        """The caption vocabulary, built once from every training report's captions (cut as the default
        caption settings cut them: data_info does not see the model's overrides; shorter captions use
        a subset of these words)."""
        cache = parts[STUDIES]
        reports = [str(r) for r, has in zip(cache.reports, cache.has_report) if has]
        config = make_config()
        return {"vocabulary": arae.caption_vocabulary(reports, config, data.min_word_count).to_json()}

    def model_config(self, overrides: Mapping[str, Any], data: TrainingData) -> dict[str, Any]:
        """The full config for this vocabulary, these labels and this image size (stage 1 at half the
        image size, at most 64, and M's alternatives the diagnoses the training data has, unless the
        overrides say)."""
        part = data.parts[STUDIES]
        size = int(part.images.shape[-1])
        fixed = {"vocab_size": len(self._vocabulary(data)), "num_labels": len(part.label_names), "image_size": size}
        trained = sorted(set(primary_labels(part.labels, part.label_names).tolist()))
        defaults = {"stage1_size": min(64, size // 2), "alternatives": trained if len(trained) >= 2 else None}
        return make_config({**defaults, **dict(overrides), **fixed})

    def batch(self, data: TrainingData, indices: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Images (B, 1, H, W) in [-1, 1], diagnoses (B,), descriptions (B, K, T) and their counts (B,)."""
        part, index = data.parts[STUDIES], indices[STUDIES]
        self.studies = len(part)
        diagnosis = primary_labels(part.labels[index], part.label_names)
        reports = [part.reports[i] if part.has_report[i] else "" for i in index]
        descriptions, counts = arae.encode_descriptions(reports, diagnosis.tolist(), self._vocabulary(data),
                                                        self._config())
        return {"image": part.images[index] * 2 - 1, "diagnosis": diagnosis,
                "descriptions": torch.from_numpy(descriptions), "counts": torch.from_numpy(counts)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The steps done, so that a bundle exported by a resumed run knows the stages trained."""
        return {"steps_done": torch.tensor([self.steps_done])}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.steps_done = int(state["steps_done"][0])

    def check_steps(self, overrides: Mapping[str, Any], steps: int) -> None:
        """Before anything starts (the driver): the model overrides are valid and the run is no longer
        than the schedule. Raises ValueError."""
        schedule = make_config(overrides)["schedule"]
        planned = sum(schedule.values())
        if steps > planned:
            raise ValueError(f"steps ({steps}) exceed the justify schedule's {planned} ({schedule}); "
                             "raise model.schedule or lower steps")

    def learning_rates(self, step: int, total_steps: int) -> dict[str, float]:
        """Constant; refuses a run longer than the schedule."""
        self.check_steps(self._config(), total_steps)
        return super().learning_rates(step, total_steps)

    def export_metadata(self, data: TrainingData) -> dict[str, Any]:
        """Label names (the diagnoses), the caption vocabulary, the label prior and the stages trained."""
        part = data.parts[STUDIES]
        schedule = self._config()["schedule"]
        done, first = [], 0
        for stage in STAGES:
            first += schedule[stage]
            if schedule[stage] and self.steps_done >= first:
                done.append(stage)
        return {"label_names": list(part.label_names), "vocabulary": data.info["vocabulary"],
                "training_data": {"label_prior": label_prior(part), "stages_trained": done}}

    # --- training ---------------------------------------------------------------------------------

    def train_step(self, engines: Mapping[str, Engine], batch: Mapping[str, torch.Tensor], step: int,
                   generator: torch.Generator) -> dict[str, float]:
        """One step of the stage `step` belongs to (module docstring)."""
        config = self._config()
        stage, within = stage_at(config["schedule"], step)
        for name in NET_NAMES:  # finished and later stages' networks are fixed functions
            engines[name].module.train(name in STAGE_NETS[stage])
        first = next(iter(engines["AE"].parameters()))
        images = batch["image"].to(device=first.device, dtype=first.dtype)
        tokens = self._pick_captions(batch, generator).to(first.device)
        diagnosis = batch["diagnosis"].to(first.device)
        losses = getattr(self, f"_{stage}")(engines, images, tokens, diagnosis, within, generator)
        self.steps_done = step + 1
        return {"stage": float(STAGES.index(stage)), **{k: float(v.detach()) for k, v in losses.items()}}

    def _pick_captions(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """One of each study's descriptions, drawn uniformly (B, T)."""
        counts = batch["counts"]
        u = torch.rand(counts.shape[0], generator=generator, device=generator.device).cpu()
        choice = (u * counts).long().clamp(max=counts - 1)
        return batch["descriptions"][torch.arange(counts.shape[0]), choice]

    def _noise(self, n: int, dim: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, dim, generator=generator, device=generator.device)
        return z.to(device=like.device, dtype=like.dtype)

    def _arae(self, engines, images, tokens, diagnosis, within, generator) -> dict[str, torch.Tensor]:
        config = self._config()
        AE, Gz, Cz = engines["AE"], engines["Gz"], engines["Cz"]
        n = tokens.shape[0]
        with frozen(*(engines[k] for k in NET_NAMES if k != "AE")):
            code_noise = config["code_noise"] * self._noise(n, config["code_dim"], images, generator)
            code, dx_logits, word_logits = AE(tokens, code_noise)
            dx_nll = F.cross_entropy(dx_logits.float(), diagnosis)
            targets = tokens[:, 1:]
            word_nll = F.cross_entropy(word_logits.float().reshape(-1, word_logits.shape[-1]), targets.reshape(-1),
                                       ignore_index=Vocabulary.pad_id)
            adversarial = Cz(code).float().mean()
            AE.backward(dx_nll + word_nll + config["encoder_adversarial"] * adversarial)
        AE.step()

        real = code.detach()
        for _ in range(config["critic_steps"]):
            with torch.no_grad():
                fake = Gz(self._noise(n, config["arae_noise"], real, generator))
            with frozen(*(engines[k] for k in NET_NAMES if k != "Cz")):
                wasserstein = Cz(real).float().mean() - Cz(fake).float().mean()
                penalty = gradient_penalty(Cz, real, fake, generator)
                Cz.backward(-wasserstein + config["gradient_penalty"] * penalty)
            Cz.step()

        with frozen(*(engines[k] for k in NET_NAMES if k != "Gz")):
            g_loss = -Cz(Gz(self._noise(n, config["arae_noise"], real, generator))).float().mean()
            Gz.backward(g_loss)
        Gz.step()
        accuracy = (dx_logits.argmax(dim=1) == diagnosis).float().mean()
        return {"ae_nll": word_nll, "ae_dx_nll": dx_nll, "ae_dx_accuracy": accuracy, "cz_wasserstein": wasserstein,
                "cz_penalty": penalty, "gz_loss": g_loss}

    def _representation(self, engines, tokens, generator, like) -> torch.Tensor:
        """r = [code of the captions (AE fixed), noise]."""
        with torch.no_grad():
            code = engines["AE"].module.encode(tokens)
        noise = self._noise(code.shape[0], self._config()["noise_dim"], code, generator)
        return torch.cat([code, noise], dim=1).to(like)

    def _adversarial(self, engines, G: str, D: str, real: torch.Tensor, r: torch.Tensor, generate,
                     generator) -> dict[str, torch.Tensor]:
        """StackGAN's matching-aware D step, then the G step, for one stage."""
        config = self._config()
        n, ca = r.shape[0], config["conditioning_augmentation"]
        wrong = r.roll(1, dims=0)  # another study's r for each real image
        eps = (lambda: self._noise(n, config["ca_dim"], r, generator)) if ca else (lambda: None)
        with torch.no_grad():
            fake, _ = generate(r, eps())
        with frozen(*(engines[k] for k in NET_NAMES if k != D)):
            d_loss = (bce(engines[D](real, r), 1.0) + config["wrong_weight"]
                      * (bce(engines[D](real, wrong), 0.0) + bce(engines[D](fake, r), 0.0)))
            engines[D].backward(d_loss)
        engines[D].step()
        with frozen(*(engines[k] for k in NET_NAMES if k != G)):
            fake, kl = generate(r, eps())
            g_adv = bce(engines[D](fake, r), 1.0)
            engines[G].backward(g_adv + config["ca_kl_weight"] * kl)
        engines[G].step()
        return {"d": d_loss, "g": g_adv, "kl": kl}

    def _stage1(self, engines, images, tokens, diagnosis, within, generator) -> dict[str, torch.Tensor]:
        real = F.interpolate(images, size=self._config()["stage1_size"], mode="area")
        r = self._representation(engines, tokens, generator, images)
        out = self._adversarial(engines, "G1", "D1", real, r, lambda rr, eps: engines["G1"](rr, eps), generator)
        return {f"{k}1": v for k, v in out.items()}

    def _stage2(self, engines, images, tokens, diagnosis, within, generator) -> dict[str, torch.Tensor]:
        r = self._representation(engines, tokens, generator, images)
        with torch.no_grad():
            low, _ = engines["G1"](r)
        out = self._adversarial(engines, "G2", "D2", images, r, lambda rr, eps: engines["G2"](low, rr, eps), generator)
        return {f"{k}2": v for k, v in out.items()}

    def _inverse(self, engines, images, tokens, diagnosis, within, generator) -> dict[str, torch.Tensor]:
        config = self._config()
        AE, G1, I = engines["AE"], engines["G1"], engines["I"]
        v = config["code_dim"]
        x = F.interpolate(images, size=config["stage1_size"], mode="area")
        r = self._representation(engines, tokens, generator, images)
        with torch.no_grad():
            generated, _ = G1(r)
        weight = diagnosis_weight(self._epoch(within, images.shape[0]))
        with frozen(*(engines[k] for k in NET_NAMES if k != "I")):
            estimate = I(x, generator)
            dx_logits = AE.module.diagnosis_logits(estimate[:, :v])
            dx = F.cross_entropy(dx_logits.float(), diagnosis)
            cycle_image = F.mse_loss(G1(estimate)[0].float(), x.float())
            cycle_code = F.mse_loss(I(generated, generator)[:, :v].float(), r[:, :v].float())
            total = weight * dx + cycle_image + cycle_code
            I.backward(total)
        I.step()
        accuracy = (dx_logits.argmax(dim=1) == diagnosis).float().mean()
        return {"i_total": total, "i_diagnosis": dx, "i_dx_weight": torch.tensor(weight),
                "i_dx_accuracy": accuracy, "i_cycle_image": cycle_image, "i_cycle_code": cycle_code}

    def _epoch(self, within: int, batch_size: int) -> int:
        """The inverse stage's epoch at its step `within`: studies seen by every worker over the set's size."""
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        return (within * batch_size * world) // max(self.studies, 1)

