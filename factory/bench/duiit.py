"""DUIIT on the brain phantoms: does translating MRI and PET into CT help a CT age regressor?

  medsynth bench duiit [--seeds 3] [--ct 300] [--test 500] [--mri 1000] [--pet 1000] [--size 64]
                       [--steps 300] [--batch 8] [--t-steps 400] [--t-batch 4] [--jobs 3] [--configs ...]

The experiment of the DUIIT paper ("Discriminative Cross-Modal Data Augmentation for Medical Imaging
Applications", section 4, Tables 2-4; see docs/models.md) on phantoms: a small real CT set (`--ct`
2-D slices), larger MRI and PET sets (`--mri`, `--pet`) of other patients (the phantom draws every
modality's patients apart: unpaired), and `--test` held-out real CT slices of yet other patients. Every number is the mean squared error of the predicted physiological
age on the held-out real CTs, in years², as mean ± standard deviation over `--seeds` seeds; each seed
draws new patients (phantom seed = benchmark seed) and new initial weights, and retrains everything
(translators included), as the paper's 10 random splits.

Configurations (the paper's names):
- PURE-CT: the regressor on the real CT slices only.
- Simple Augment: the same on real CTs under standard augmentations (left-right flip, small affine:
  rotation ±10°, scale 0.9-1.1, shift ±2 px; contrast x0.9-1.1 and brightness ±0.05 of the head).
- CycleGAN S->CT (S = MRI, PET, MRI+PET): the DUIIT recipe with λ = 0, i.e. unsupervised CycleGAN
  (no age term reaches the translators); then a regressor on the real CTs plus the translations of
  every source slice, labelled with the source patients' ages.
- MIX-CT-S (DUIIT, S = MRI, PET, MRI+PET): the DUIIT recipe (λ = 0.001): translators trained jointly
  with the age regressor P, P seeing real CTs plus each step's translations with their ages; P
  starts from the PURE-CT regressor (the paper's appendix A.5 pretrains P on pure CT "to stabilise").
  Two readings, as the paper has both: "two-stage" (the headline, the tables' protocol in the paper's
  appendix: experiment 1 trains the translator with P, experiments 3-5 train the predictive models
  of Tables 2-4 on CT + translated mixtures) is a fresh regressor trained exactly like the CycleGAN
  baseline's on the real CTs plus the final translations; "joint" is the jointly trained P itself.

Fairness: every regressor except the joint P (PURE-CT, Simple Augment, every two-stage one) is the same
architecture from the same initial weights per seed, takes the same `--steps` updates (Adam 1e-3 held
for the first half then decayed linearly: the recipe's P schedule) of the same `--batch` real CTs in
the same order, plus `--batch` translated slices per source where it has sources. Before testing,
every regressor's batch-norm statistics are re-estimated on the real training CTs (precise BN): a
regressor trained on mixed batches otherwise tests real CTs with statistics dominated by translated
(or, for Simple Augment, resampled and so smoothed) images; the JSON keeps both errors ("mse",
"mse_raw"). All translator runs (DUIIT and CycleGAN) take `--t-steps` joint steps of `--t-batch`
slices per part. MRI and PET slices are resampled to the CT's pixel spacing (the scanners' fields of
view differ: 220, 240 and 280 mm), as one puts real scans on a common grid. A diagnostic per
translator: the PURE-CT regressor's age error on its translations ("translated_mse": how much
CT-readable age the translation keeps).

How it runs: the recipe's own `train_step` (factory.train.recipes.duiit) through plain-torch
`TorchEngine`s, in process on the CPU (or `--device`), with the learning rates the runner would set
(`recipe.learning_rates`). No Ray, no DeepSpeed: the runner's distribution does not change the
method, and this benchmark measures the method. Data come the way `medsynth train` reads them:
phantoms written as NIfTI and read back through the volume adapter (factory.data.training.open_part).
Seeds run in `--jobs` processes (one torch thread each by default).

Sizes are chosen for every configuration x 3 seeds to run in about half an hour on 2 shared CPU cores
(the MIX-CT-MRI-PET translator run is the critical path): 64 px slices, small translators
(`--g-width 8 --g-blocks 2 --d-width 8`; CycleGAN's are 64, 6 blocks and 64), a few hundred translator
steps (CycleGAN trains for ~10^5), and the small CNN of the brain-age benchmark
(factory.evaluate.brain_age) as the regressor instead of the recipe's ResNet-18 (`--predictor resnet18`,
many times the compute). Wider translators (`--g-width 32 --d-width 32`) keep more of the age, at
several times the translators' cost. Results at both widths and what each size costs:
docs/bench/duiit.md. Writes `--out` (JSON: settings, machine, per-seed errors and wall times), the same
stem with .md (the tables) and `--picture` (source / translated / real CT slices from seed 0's
MIX-CT-MRI-PET model).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from factory.models import duiit
from factory.models.duiit import SOURCES, TARGET
from factory.seeding import global_rng_seeded

PURE, AUGMENT = "PURE-CT", "Simple Augment"
SOURCE_SETS = {"MRI": ("mri",), "PET": ("pet",), "MRI-PET": ("mri", "pet")}
CONFIGS = (PURE, AUGMENT, *(f"CycleGAN {s}" for s in SOURCE_SETS), *(f"MIX-CT-{s}" for s in SOURCE_SETS))
PREDICTORS = ("small", "resnet18")
PAPER = ("Discriminative Cross-Modal Data Augmentation for Medical Imaging Applications "
         "(under review at ICLR 2021), Tables 2-4")


@dataclass
class Settings:
    seeds: int = 3
    ct: int = 300
    test: int = 500
    mri: int = 1000
    pet: int = 1000
    size: int = 64
    steps: int = 300  # updates of every regressor
    batch: int = 8  # real CTs per regressor update (and translated slices per source)
    t_steps: int = 400  # joint steps of every translator run (DUIIT and CycleGAN)
    t_batch: int = 4  # real CTs and source slices per joint step
    t_lr: float = 2e-4  # translators' and discriminators' Adam rate (the paper's)
    g_width: int = 8
    g_blocks: int = 2
    d_width: int = 8
    predictor: str = "small"
    lambda_pred: float = 0.001
    pretrain_p: bool = True  # DUIIT's P starts from the PURE-CT regressor (the paper's appendix A.5)
    same_spacing: bool = True
    configs: list[str] = field(default_factory=lambda: list(CONFIGS))
    threads: int = 1
    jobs: int = 3  # seeds run in parallel processes
    device: str = "cpu"

    def translator_config(self, sources: Sequence[str], lambda_pred: float) -> dict[str, Any]:
        lr = dict(duiit.DEFAULT_CONFIG["lr"], T=self.t_lr, D=self.t_lr)
        return {"sources": list(sources), "lambda_pred": lambda_pred, "lr": lr, "g_width": self.g_width,
                "g_blocks": self.g_blocks, "d_width": self.d_width}


# --- pure helpers ----------------------------------------------------------------------------------

class IndexStream:
    """Indices 0..n-1 in successive seeded permutations (epochs), taken `count` at a time."""

    def __init__(self, n: int, seed: Sequence[int]):
        if n < 1:
            raise ValueError(f"need at least one item, not {n}")
        self.n, self.rng = n, np.random.default_rng(list(seed))
        self.order = self.rng.permutation(n)
        self.at = 0

    def take(self, count: int) -> np.ndarray:
        out = []
        while count > 0:
            if self.at == self.n:
                self.order, self.at = self.rng.permutation(self.n), 0
            chunk = self.order[self.at:self.at + count]
            self.at += len(chunk)
            count -= len(chunk)
            out.append(chunk)
        return np.concatenate(out)


def simple_augment(images: torch.Tensor, generator: torch.Generator, rotate_deg: float = 10.0,
                   scale: tuple[float, float] = (0.9, 1.1), shift_px: float = 2.0, contrast: float = 0.1,
                   brightness: float = 0.05) -> torch.Tensor:
    """Standard augmentations of (B, 1, H, W) images in [-1, 1] (background -1): a left-right flip with
    probability 1/2, a small random affine (rotation, isotropic scale, shift; bilinear, background
    filled with -1), then contrast and brightness jitter of everything but the background (-1 stays
    -1); clipped back to [-1, 1]."""
    b, _, h, w = images.shape
    device = images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, generator=generator).to(device) * (high - low) + low

    angle = torch.deg2rad(uniform(-rotate_deg, rotate_deg))
    factor = uniform(*scale)
    flip = torch.where(torch.rand(b, generator=generator).to(device) < 0.5, -1.0, 1.0)
    tx, ty = uniform(-shift_px, shift_px) * 2 / w, uniform(-shift_px, shift_px) * 2 / h
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    # Sample (x + 1) with zero padding so that outside the image is -1 (air / background) after the shift back.
    warped = F.grid_sample(images + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    gain = uniform(1 - contrast, 1 + contrast).view(b, 1, 1, 1)
    offset = uniform(-brightness, brightness).view(b, 1, 1, 1)
    jittered = ((warped + 1) * gain - 1 + offset).clamp(-1, 1)
    # Air lies far below any brain window: what was black stays black, as a scanner's calibration drift
    # of a few HU would leave it (jittering the background too teaches the regressor a background level
    # that real test CTs never show).
    return torch.where(warped <= -1 + 1e-3, torch.full_like(warped, -1.0), jittered)


def resample_to_spacing(images: torch.Tensor, spacing: float, target: float) -> torch.Tensor:
    """(B, 1, H, W) images in [-1, 1] with `spacing` mm per pixel, resampled about the centre to `target`
    mm per pixel on the same grid size (bilinear; beyond the field of view: -1, the background)."""
    if spacing == target:
        return images
    b = images.shape[0]
    theta = torch.zeros(b, 2, 3, dtype=images.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = target / spacing
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def recalibrate_batch_norm(model: nn.Module, images: torch.Tensor, batch: int, device: str) -> nn.Module:
    """Re-estimate every batch-norm layer's running statistics as exact averages over `images` in
    batches of `batch` (precise BN); weights untouched. Used on the real training CTs before testing."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for start in range(0, len(images) - batch + 1, batch):
            model(images[start:start + batch].to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


# --- data ------------------------------------------------------------------------------------------

@dataclass
class Phantoms:
    """One seed's slices in model space ([-1, 1], see factory.models.duiit) with normalised ages."""
    images: dict[str, torch.Tensor]  # "ct", "test", "mri", "pet": (N, 1, H, W)
    ages: dict[str, torch.Tensor]  # normalised: (age - 55) / 20
    years: dict[str, torch.Tensor]
    study_ids: dict[str, list[str]]
    spacing: dict[str, float]  # mm per pixel as read (before resampling the sources to the CT's)


def load_phantoms(settings: Settings, seed: int) -> Phantoms:
    """Phantom patients of seed `seed` through the training data path (NIfTI, volume adapter): CT
    patients 0..ct-1 for training and ct..ct+test-1 held out, MRI and PET patients of their own.
    With `same_spacing`, MRI and PET slices are resampled to the CT's pixel spacing (the scanners'
    fields of view differ: 220, 240, 280 mm), as one registers real scans to a common grid."""
    from factory.config import TrainDataConfig
    from factory.data.training import open_part

    counts = {"ct": settings.ct + settings.test, "mri": settings.mri, "pet": settings.pet}
    data = TrainDataConfig(source="phantom-brain", counts=counts, size=settings.size, seed=seed)
    config = duiit.make_config(image_size=settings.size)
    images, ages, years, ids, spacing = {}, {}, {}, {}, {}
    for part in (TARGET, *SOURCES):
        with open_part(data, part) as dataset:
            studies = [dataset[i] for i in range(len(dataset))]
        raw = torch.stack([study.image for study in studies]).float()
        age = torch.stack([study.labels[0] for study in studies]).float()
        names = [study.study_id for study in studies]
        x = duiit.to_model_space(raw, part, config)
        spacing[part] = float(studies[0].meta["spacing"][-1])
        if part != TARGET and settings.same_spacing:
            x = resample_to_spacing(x, spacing[part], spacing[TARGET])
        if part == TARGET:
            n = settings.ct
            for key, sl in (("ct", slice(0, n)), ("test", slice(n, None))):
                images[key], years[key], ids[key] = x[sl], age[sl], names[sl]
        else:
            images[part], years[part], ids[part] = x, age, names
    for key, value in years.items():
        ages[key] = duiit.normalise_age(value, config)
    return Phantoms(images, ages, years, ids, spacing)


# --- regressors ------------------------------------------------------------------------------------

class SmallPredictor(nn.Module):
    """The brain-age benchmark's small CNN (factory.evaluate.brain_age.small_regressor), (B, 1, H, W) -> (B,)."""

    def __init__(self):
        super().__init__()
        from factory.evaluate.brain_age import small_regressor

        self.net = small_regressor()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)[:, 0]


def make_regressor(kind: str, seed: int) -> nn.Module:
    """The age regressor every configuration uses, its initial weights a function of `seed` alone."""
    if kind not in PREDICTORS:
        raise ValueError(f"predictor must be one of {list(PREDICTORS)}, not {kind!r}")
    with global_rng_seeded(seed):
        return SmallPredictor() if kind == "small" else duiit.AgePredictor(kind)


def predict(model: nn.Module, images: torch.Tensor, device: str, chunk: int = 256) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(images[i:i + chunk].to(device)).float().cpu() for i in range(0, len(images), chunk)])
    model.train()
    return out


def heldout_mse(model: nn.Module, data: Phantoms, device: str) -> float:
    """Mean squared error of the predicted age on the held-out real CTs, years²."""
    return age_mse(model, data.images["test"], data.years["test"], device)


def age_mse(model: nn.Module, images: torch.Tensor, years: torch.Tensor, device: str) -> float:
    years_predicted = duiit.age_in_years(predict(model, images, device), duiit.DEFAULT_CONFIG)
    return float(((years_predicted - years) ** 2).mean())


def evaluate(model: nn.Module, data: Phantoms, settings: Settings) -> dict[str, float]:
    """Held-out CT error as trained ("mse_raw": batch-norm statistics as accumulated in training, over
    whatever mixture the regressor saw) and after re-estimating them on the real training CTs ("mse")."""
    raw = heldout_mse(model, data, settings.device)
    recalibrate_batch_norm(model, data.images["ct"], settings.batch, settings.device)
    return {"mse": heldout_mse(model, data, settings.device), "mse_raw": raw}


def _streams(data: Phantoms, sources: Sequence[str], seed: int) -> dict[str, IndexStream]:
    # One stream per part and seed, whatever the configuration: every regressor meets the real CTs
    # in the same order, and each source's slices too.
    return {part: IndexStream(len(data.images[part]), (seed, 1, index))
            for index, part in enumerate((TARGET, *SOURCES)) if part == TARGET or part in sources}


def train_regressor(data: Phantoms, extra: Mapping[str, torch.Tensor], settings: Settings, seed: int,
                    augment: bool = False) -> nn.Module:
    """A fresh regressor: `steps` Adam updates on `batch` real CTs (augmented if asked) plus `batch`
    slices of each `extra` set (translations of that source, with its patients' ages). Adam at the
    recipe's P rate (1e-3), held for the first half of the updates, then decayed linearly (the
    recipe's schedule)."""
    from factory.train.recipes.duiit import linear_decay

    config = duiit.DEFAULT_CONFIG
    model = make_regressor(settings.predictor, seed).to(settings.device)
    lr, betas = config["lr"]["P"], tuple(config["betas"]["P"])
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    streams = _streams(data, tuple(extra), seed)
    generator = torch.Generator().manual_seed(seed * 1000 + 7)
    # Dropout draws from the global generator: unseeded, two identical runs differed (docs/bench/duiit.md).
    with global_rng_seeded(seed * 1000 + 8):
        for step in range(settings.steps):
            for group in optimiser.param_groups:
                group["lr"] = lr * linear_decay(step, settings.steps, config["lr_decay_start"])
            index = streams[TARGET].take(settings.batch)
            images, targets = [data.images["ct"][index]], [data.ages["ct"][index]]
            if augment:
                images[0] = simple_augment(images[0], generator)
            for source, translated in extra.items():
                index = streams[source].take(settings.batch)
                images.append(translated[index])
                targets.append(data.ages[source][index])
            predicted = model(torch.cat(images).to(settings.device))
            loss = F.mse_loss(predicted.float(), torch.cat(targets).to(settings.device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return model


# --- the DUIIT recipe, in process ------------------------------------------------------------------

def training_data(data: Phantoms, sources: Sequence[str]):
    """The recipe's TrainingData view: adapter units are not needed again, so parts hold model-space
    images and `batch` is bypassed (see `joint_run`)."""
    from factory.train.data import DataPart, TrainingData

    parts = {}
    for part in (TARGET, *sources):
        n = len(data.images[part])
        parts[part] = DataPart(images=data.images[part], labels=data.years[part].view(n, 1), label_names=("age",),
                               study_ids=data.study_ids[part], reports=[""] * n, has_report=np.zeros(n, bool))
    return TrainingData(parts=parts)


def joint_run(data: Phantoms, sources: Sequence[str], lambda_pred: float, settings: Settings, seed: int,
              p_start: nn.Module | None = None):
    """The DUIIT recipe's train_step, `t_steps` times with `t_batch` slices per part, through plain
    TorchEngines with the learning rates the runner sets (`recipe.learning_rates`). Returns the
    recipe's networks (P: the benchmark's regressor, from the same start as every configuration's),
    their model config and the last step's losses."""
    from factory.train.engines import apply_learning_rates, torch_engines
    from factory.train.recipes import get_recipe

    recipe = get_recipe("duiit")
    config = recipe.model_config(settings.translator_config(sources, lambda_pred), training_data(data, sources))
    nets = recipe.build(config, seed=seed)
    nets["P"] = make_regressor(settings.predictor, seed)
    if p_start is not None:  # the paper's appendix A.5: P pretrained on the pure CTs
        nets["P"].load_state_dict(p_start.state_dict())
    for net in nets.values():
        net.to(settings.device)
    engines = torch_engines(nets, recipe.optimizer_config)
    streams = _streams(data, sources, seed)
    generator = torch.Generator().manual_seed(seed * 1000 + 11)
    metrics: dict[str, float] = {}
    with global_rng_seeded(seed * 1000 + 12):
        for step in range(settings.t_steps):
            apply_learning_rates(engines, recipe.learning_rates(step, settings.t_steps))
            batch = {}
            for part in (TARGET, *recipe.config["sources"]):
                index = streams[part].take(settings.t_batch)
                batch[part] = data.images[part][index]  # already in model space: what recipe.batch gives
                batch[f"{part}_age"] = data.ages[part][index]
            metrics = recipe.train_step(engines, batch, step, generator)
    return nets, config, metrics


def translate_all(nets: Mapping[str, nn.Module], images: torch.Tensor, source: str, chunk: int = 256) -> torch.Tensor:
    out = torch.cat([duiit.translate(nets, images[i:i + chunk], source).float().cpu()
                     for i in range(0, len(images), chunk)])
    nets[f"T_{source}"].train()
    return out


# --- the benchmark ---------------------------------------------------------------------------------

def run_seed(settings: Settings, seed: int, picture: str | None = None, log=print) -> dict[str, Any]:
    """Every configuration for one seed: {config: {"mse", "mse_raw", ..., "wall_s"}}."""
    started = time.perf_counter()
    data = load_phantoms(settings, seed)
    results: dict[str, dict[str, Any]] = {"_data": {"wall_s": round(time.perf_counter() - started, 1)}}
    wanted = set(settings.configs)

    def record(name: str, started: float, **values: Any) -> None:
        results[name] = {**{k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()},
                         "wall_s": round(time.perf_counter() - started, 1)}
        shown = " ".join(f"{k}={v}" for k, v in results[name].items() if k != "last_losses")
        log(f"  seed {seed} {name}: {shown}")

    # PURE-CT always trains: its regressor also scores translations ("translated_mse": how well a
    # CT-only regressor reads the ages of translated slices, a measure of what the translation keeps).
    t = time.perf_counter()
    reference = train_regressor(data, {}, settings, seed)
    record(PURE, t, **evaluate(reference, data, settings))

    def translated_mse(translated: Mapping[str, torch.Tensor]) -> dict[str, float]:
        return {s: round(age_mse(reference, x, data.years[s], settings.device), 2) for s, x in translated.items()}

    if AUGMENT in wanted:
        t = time.perf_counter()
        record(AUGMENT, t, **evaluate(train_regressor(data, {}, settings, seed, augment=True), data, settings))

    cyclegan = [s for s in SOURCE_SETS if f"CycleGAN {s}" in wanted]
    if cyclegan:
        # λ = 0: no age term reaches the translators, so each source's CycleGAN trains independently of
        # the other's and of P; one run with every needed source gives all of them.
        needed = [s for s in SOURCES if any(s in SOURCE_SETS[k] for k in cyclegan)]
        t = time.perf_counter()
        nets, _, metrics = joint_run(data, needed, 0.0, settings, seed)
        translated = {s: translate_all(nets, data.images[s], s) for s in needed}
        results["_cyclegan_translators"] = {"sources": needed, "wall_s": round(time.perf_counter() - t, 1),
                                            "translated_mse": translated_mse(translated),
                                            "last_losses": {k: round(v, 4) for k, v in metrics.items()}}
        log(f"  seed {seed} CycleGAN translators: {results['_cyclegan_translators']}")
        for key in cyclegan:
            t = time.perf_counter()
            model = train_regressor(data, {s: translated[s] for s in SOURCE_SETS[key]}, settings, seed)
            record(f"CycleGAN {key}", t, **evaluate(model, data, settings),
                   translated_mse={s: results["_cyclegan_translators"]["translated_mse"][s] for s in SOURCE_SETS[key]})
        del nets

    for key, sources in SOURCE_SETS.items():
        name = f"MIX-CT-{key}"
        if name not in wanted:
            continue
        t = time.perf_counter()
        nets, config, metrics = joint_run(data, sources, settings.lambda_pred, settings, seed,
                                          p_start=reference if settings.pretrain_p else None)
        joint = evaluate(nets["P"], data, settings)
        translated = {s: translate_all(nets, data.images[s], s) for s in sources}
        joint_s = time.perf_counter() - t
        model = train_regressor(data, translated, settings, seed)
        record(name, t, **evaluate(model, data, settings), joint_mse=joint["mse"], joint_mse_raw=joint["mse_raw"],
               translated_mse=translated_mse(translated), joint_wall_s=round(joint_s, 1),
               last_losses={k: round(v, 4) for k, v in metrics.items()})
        if picture and key == "MRI-PET":
            translation_picture(picture, data, nets, config)
            log(f"  wrote {picture}")
        del nets
    return results


def summarise(per_seed: Sequence[Mapping[str, Any]], configs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per configuration, mean, sd and per-seed values of each error it has (and of the PURE-CT
    regressor's error on its translations, per source)."""
    def stats(values: list[float]) -> dict[str, Any]:
        mean, sd = mean_sd(values)
        return {"mean": round(mean, 2), "sd": round(sd, 2), "per_seed": values}

    summary = {}
    for name in configs:
        rows = [r[name] for r in per_seed if name in r]
        if not rows:
            continue
        entry: dict[str, Any] = {}
        for key in ("mse", "mse_raw", "joint_mse", "joint_mse_raw"):
            values = [row[key] for row in rows if key in row]
            if values:
                entry[key] = stats(values)
        translated = [row["translated_mse"] for row in rows if "translated_mse" in row]
        if translated:
            entry["translated_mse"] = {src: stats([t[src] for t in translated]) for src in translated[0]}
        summary[name] = entry
    return summary


def _cell(entry: Mapping[str, Any] | None, key: str = "mse") -> str:
    if not entry or key not in entry:
        return "-"
    return f"{entry[key]['mean']:.1f} ± {entry[key]['sd']:.1f}"


def _translated_cell(entry: Mapping[str, Any] | None) -> str:
    if not entry or "translated_mse" not in entry:
        return "-"
    return ", ".join(f"{src.upper()} {v['mean']:.0f} ± {v['sd']:.0f}" for src, v in entry["translated_mse"].items())


def tables(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: Table 2 (data settings), Table 3 (vs CycleGAN per source), Table 4 (vs augmentation)."""
    lines = ["Age MSE on held-out real CT slices (years², mean ± sd over seeds); lower is better.", "",
             "**Table 2: data settings (DUIIT).** Two-stage: a fresh regressor on the real CTs plus the final "
             "translations (the paper's appendix, experiments 3-5); joint: the regressor trained with the "
             "translator.", "",
             "| | PURE-CT | MIX-CT-MRI | MIX-CT-PET | MIX-CT-MRI-PET |", "|---|---|---|---|---|",
             *(f"| {label} | " + " | ".join([_cell(summary.get(PURE), pure_key)] + [
                 _cell(summary.get(f"MIX-CT-{k}"), key) for k in SOURCE_SETS]) + " |"
               for label, key, pure_key in (("two-stage", "mse", "mse"), ("joint", "joint_mse", "mse"),
                                            ("two-stage, BN as trained", "mse_raw", "mse_raw"),
                                            ("joint, BN as trained", "joint_mse_raw", "mse_raw"))), "",
             "Rows 1-2 (the headline): every regressor's batch-norm statistics re-estimated on the real training "
             "CTs before testing; rows 3-4: as accumulated in training (over whatever mixture it saw).", "",
             "**Table 3: DUIIT vs unsupervised CycleGAN translation** (regressor on CT + translations). The last two "
             "columns: the PURE-CT regressor's age MSE on the translated slices (how much CT-readable age the "
             "translation keeps).", "",
             "| Source | CycleGAN | DUIIT two-stage | DUIIT joint | PURE-CT on CycleGAN's | PURE-CT on DUIIT's |",
             "|---|---|---|---|---|---|"]
    for key in SOURCE_SETS:
        mix, cyclegan = summary.get(f"MIX-CT-{key}"), summary.get(f"CycleGAN {key}")
        lines.append(f"| {key.replace('-', '+')} → CT | {_cell(cyclegan)} | {_cell(mix)} | {_cell(mix, 'joint_mse')} | "
                     f"{_translated_cell(cyclegan)} | {_translated_cell(mix)} |")
    lines += ["", "**Table 4: DUIIT vs data augmentation** (two-stage)", "",
              "| | PURE-CT | Simple Augment | DUIIT MRI→CT | DUIIT PET→CT | DUIIT MRI+PET→CT |",
              "|---|---|---|---|---|---|",
              *(f"| {label} | " + " | ".join(_cell(summary.get(k), key) for k in (
                  PURE, AUGMENT, "MIX-CT-MRI", "MIX-CT-PET", "MIX-CT-MRI-PET")) + " |"
                for label, key in (("BN re-estimated", "mse"), ("BN as trained", "mse_raw")))]
    return "\n".join(lines)


# --- the picture -----------------------------------------------------------------------------------

PICTURE_AGES = (25, 40, 55, 70, 85)


def nearest_by_age(years: torch.Tensor, targets: Sequence[float]) -> list[int]:
    """For each target age, the index of the slice whose age is closest (distinct slices)."""
    chosen: list[int] = []
    for target in targets:
        order = torch.argsort((years - target).abs()).tolist()
        chosen.append(next(i for i in order if i not in chosen))
    return chosen


def translation_picture(path: str, data: Phantoms, nets: Mapping[str, nn.Module], config: Mapping[str, Any],
                        scale: int = 2) -> None:
    """Rows: MRI source, its translation into CT, a real CT of the same age; the same for PET.
    CTs shown in the brain window the networks see; MRI and PET as the networks see them."""
    from PIL import Image, ImageDraw

    size = data.images["ct"].shape[-1]
    tile, margin, top = size * scale, 150, 22
    rows = []
    for source in SOURCES:
        picked = nearest_by_age(data.years[source], PICTURE_AGES)
        images = data.images[source][picked]
        translated = translate_all(nets, images, source)
        real = nearest_by_age(data.years["test"], data.years[source][picked].tolist())
        rows += [(f"{source.upper()} (source)", images, data.years[source][picked]),
                 (f"{source.upper()} -> CT (DUIIT)", translated, data.years[source][picked]),
                 ("real CT, held out", data.images["test"][real], data.years["test"][real])]
    sheet = Image.new("L", (margin + tile * len(PICTURE_AGES), (top + tile) * len(rows) + 6), 0)
    draw = ImageDraw.Draw(sheet)
    for r, (label, images, years) in enumerate(rows):
        y = r * (top + tile) + (6 if r >= 3 else 0)
        draw.text((6, y + top + tile // 2 - 6), label, fill=255)
        for c in range(len(PICTURE_AGES)):
            pixels = ((images[c, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
            sheet.paste(Image.fromarray(pixels).resize((tile, tile), Image.NEAREST), (margin + c * tile, y + top))
            draw.text((margin + c * tile + 4, y + 6), f"age {float(years[c]):.0f}", fill=255)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)


# --- command line ----------------------------------------------------------------------------------

def ratios(summary: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """MIX-CT-MRI-PET's mean error over PURE-CT's, per reading (the headline: two-stage)."""
    pure, mix = summary.get(PURE), summary.get("MIX-CT-MRI-PET")
    if not pure or not mix:
        return None
    out: dict[str, Any] = {}
    for label, key, pure_key in (("two_stage", "mse", "mse"), ("joint", "joint_mse", "mse"),
                                 ("two_stage_bn_as_trained", "mse_raw", "mse_raw"),
                                 ("joint_bn_as_trained", "joint_mse_raw", "mse_raw")):
        if key in mix and pure_key in pure:
            out[label] = round(mix[key]["mean"] / pure[pure_key]["mean"], 3)
    return {**out, "target": 0.85}


def markdown(result: Mapping[str, Any]) -> str:
    """The tables and a note on the settings, from a result (or its saved JSON)."""
    s, m = Settings(**result["settings"]), result["machine"]
    note = (f"{s.seeds} seeds (new patients and initial weights each); per seed {s.ct} real CT training slices, "
            f"{s.mri} MRI and {s.pet} PET slices of other patients"
            f"{' resampled to the CT pixel spacing' if s.same_spacing else ''}, {s.test} held-out CT slices; {s.size} px. "
            f"Every regressor ({s.predictor}): {s.steps} updates of {s.batch} real CTs (+ {s.batch} translated slices "
            f"per source). Translators (DUIIT and CycleGAN alike): {s.t_steps} joint steps of {s.t_batch} slices per "
            f"part, Adam {s.t_lr:g}, g_width {s.g_width}, g_blocks {s.g_blocks}, d_width {s.d_width}; "
            f"λ {s.lambda_pred:g}{', P pretrained on the real CTs' if s.pretrain_p else ''}. Wall time "
            f"{result['wall_s']:.0f} s on {m['cpus']} shared CPUs ({s.jobs} job(s) x {s.threads} torch thread(s)), "
            f"torch {m['torch']}.")
    ratio = result.get("ratio_mix_ct_mri_pet_to_pure_ct")
    if ratio:
        shown = ", ".join(f"{v:.3f} ({k.replace('_', ' ')})" for k, v in ratio.items() if k != "target")
        note += f" MIX-CT-MRI-PET / PURE-CT: {shown}; target < 0.85."
    return tables(result["summary"]) + "\n\n" + note + "\n"


def _seed_job(job: tuple[Settings, int, str | None]) -> dict[str, Any]:
    settings, seed, picture = job
    torch.set_num_threads(settings.threads)
    return run_seed(settings, seed, picture, log=lambda line: print(line, flush=True))


def run(settings: Settings, picture: str | None, log=print) -> dict[str, Any]:
    from factory.bench.produce import machine

    unknown = sorted(set(settings.configs) - set(CONFIGS))
    if unknown:
        raise ValueError(f"unknown configurations {unknown}; choose from {list(CONFIGS)}")
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    jobs = [(settings, seed, picture if seed == 0 else None) for seed in range(settings.seeds)]
    if settings.jobs > 1:
        from factory.process_pool import process_pool

        with process_pool(min(settings.jobs, settings.seeds)) as pool:
            per_seed = pool.map(_seed_job, jobs, chunksize=1)
    else:
        per_seed = [_seed_job(job) for job in jobs]
    wall = time.perf_counter() - started
    configs = [c for c in CONFIGS if c in settings.configs or c == PURE]
    summary = summarise(per_seed, configs)
    result: dict[str, Any] = {
        "task": "physiological age from one axial CT slice (brain phantoms); DUIIT translation of MRI/PET into CT",
        "paper": PAPER,
        "metric": "mean squared error of the predicted age on held-out real CT slices, years²",
        "settings": asdict(settings),
        "summary": summary,
        "per_seed": per_seed,
        "wall_s": round(wall, 1),
        "machine": {**machine(), "torch_threads_per_job": settings.threads, "jobs": settings.jobs},
    }
    ratio = ratios(summary)
    if ratio:
        result["ratio_mix_ct_mri_pet_to_pure_ct"] = ratio
    return result


def main(argv: list[str] | None = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="medsynth bench duiit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=defaults.seeds, help="seeds 0..N-1 (new patients and weights each)")
    parser.add_argument("--ct", type=int, default=defaults.ct, help="real CT training slices (one per patient)")
    parser.add_argument("--test", type=int, default=defaults.test, help="held-out real CT slices (other patients)")
    parser.add_argument("--mri", type=int, default=defaults.mri, help="MRI slices (other patients)")
    parser.add_argument("--pet", type=int, default=defaults.pet, help="PET slices (other patients)")
    parser.add_argument("--size", type=int, default=defaults.size, help="slice side, px")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="updates of every regressor")
    parser.add_argument("--batch", type=int, default=defaults.batch,
                        help="real CTs per regressor update (and translated slices per source)")
    parser.add_argument("--t-steps", type=int, default=defaults.t_steps, help="joint steps of every translator run")
    parser.add_argument("--t-batch", type=int, default=defaults.t_batch, help="CTs and source slices per joint step")
    parser.add_argument("--t-lr", type=float, default=defaults.t_lr, help="translator/discriminator Adam rate")
    parser.add_argument("--g-width", type=int, default=defaults.g_width)
    parser.add_argument("--g-blocks", type=int, default=defaults.g_blocks)
    parser.add_argument("--d-width", type=int, default=defaults.d_width)
    parser.add_argument("--predictor", choices=PREDICTORS, default=defaults.predictor)
    parser.add_argument("--lambda-pred", type=float, default=defaults.lambda_pred, help="DUIIT's λ (paper: 0.001)")
    parser.add_argument("--no-pretrain-p", dest="pretrain_p", action="store_false",
                        help="DUIIT's P starts from scratch, not from the PURE-CT regressor")
    parser.add_argument("--no-same-spacing", dest="same_spacing", action="store_false",
                        help="keep MRI and PET at their own pixel spacing")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), metavar="NAME",
                        help=f"subset of {list(CONFIGS)} (PURE-CT always runs)")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads per job")
    parser.add_argument("--jobs", type=int, default=defaults.jobs, help="seeds run in parallel processes")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--out", default="docs/bench/duiit.json")
    parser.add_argument("--picture", default="docs/duiit-translation.png",
                        help="source / translated / real CT grid ('' for none)")
    args = parser.parse_args(argv)
    settings = Settings(**{k: v for k, v in vars(args).items() if k not in ("out", "picture")})
    result = run(settings, args.picture or None)
    text = markdown(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
