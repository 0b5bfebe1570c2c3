"""What the justify tests share: tiny settings, phantom training data in memory, and a tiny model
trained in process through the recipe's stages."""

from __future__ import annotations

import numpy as np
import torch

from factory.data.labels import CXR_LABELS
from factory.data.phantoms.cxr import phantom_arrays, phantom_reports
from factory.models.justify import arae
from factory.models.justify.config import make_config
from factory.train.data import DataPart, TrainingData
from factory.train.engines import torch_engines
from factory.train.recipes import get_recipe

TINY = {"code_dim": 16, "word_embedding": 16, "arae_noise": 8, "arae_hidden": 16, "noise_dim": 8, "g1_width": 2,
        "d1_width": 4, "g2_width": 2, "d2_width": 4, "i_width": 4, "i_hidden": 16, "ca_dim": 8, "critic_steps": 2,
        "residual_blocks": 1, "schedule": {"arae": 1, "stage1": 1, "stage2": 1, "inverse": 1}}


def phantom_data(count: int = 24, size: int = 32, seed: int = 0, labels: tuple[str, ...] = CXR_LABELS) -> TrainingData:
    """Phantom studies with the given labels (the paper's two diagnoses: No Finding, Cardiomegaly)."""
    images, values = phantom_arrays(seed, 0, count, size, size)
    values = np.asarray(values, np.float32)[:, [CXR_LABELS.index(name) for name in labels]]
    reports = list(phantom_reports(seed, count))
    vocabulary = arae.caption_vocabulary(reports, make_config(), min_count=2)
    part = DataPart(images=torch.from_numpy(np.asarray(images, np.float32)),
                    labels=torch.from_numpy(values), label_names=labels,
                    study_ids=[str(i) for i in range(count)], reports=reports, has_report=np.ones(count, bool))
    return TrainingData(parts={"studies": part}, info={"vocabulary": vocabulary.to_json()})


def setup(data: TrainingData, seed: int = 0, **overrides):
    """The recipe, its networks (model config from the data) and plain-torch engines."""
    torch.set_num_threads(1)
    recipe = get_recipe("justify")
    nets = recipe.build(recipe.model_config({**TINY, **overrides}, data), seed=seed)
    return recipe, nets, torch_engines(nets, recipe.optimizer_config)


def run_steps(recipe, engines, data: TrainingData, steps: range, batch_size: int = 4, seed: int = 0) -> list[dict]:
    """Train steps as the runner does (batch indices and the generator from the seed and the step)."""
    total = sum(recipe.config["schedule"].values())
    out = []
    for step in steps:
        rng = np.random.default_rng([seed, step])
        index = np.sort(rng.choice(len(data.parts["studies"]), size=batch_size, replace=False))
        recipe.learning_rates(step, total)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        out.append(recipe.train_step(engines, recipe.batch(data, {"studies": index}), step, generator))
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Training images (N, 1, H, W) in [0, 1] -> 8-bit (N, H, W)."""
    return (images[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def write_untrained_bundle(url: str, size: int = 32, **overrides) -> str:
    """An untrained justify bundle of TINY's widths (the chest X-ray labels, a phantom-report vocabulary)
    with `overrides` in its model config, e.g. a counterfactual search cut to a few steps."""
    from factory.models import registry
    from factory.models.bundle import write_bundle
    from factory.models.justify.model import untrained_shape

    shape = untrained_shape(size, seed=0)
    config = registry.make_config("justify", {**TINY, **shape.overrides, **overrides})
    write_bundle(url, "justify", registry.build_networks("justify", config, seed=0), config, shape.label_names,
                 shape.vocabulary, training_data={"fingerprint": "untrained"}, metrics={}, trained=False)
    return url
