"""The brain-age regressor: a small CNN that reads physiological age from one axial CT slice.

Evaluation trains it on real CT (or the brain phantom's CT) and reads translated CT with it: how much
age-related anatomy a translation keeps (factory.evaluate.translation). The benchmarks use the same
network and training (factory.bench.brain_age, factory.bench.duiit). Slices enter as Hounsfield units
clipped to the brain window and mapped onto [0, 1]; the network predicts (age - 55) / 20.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from factory.seeding import global_rng_seeded

AGE_CENTRE, AGE_SCALE = 55.0, 20.0
BRAIN_WINDOW = (-20.0, 120.0)  # HU; bone saturates, as on a brain-window CT film
MIN_SIDE = 32  # five 2x poolings


def windowed(hounsfield: torch.Tensor, window: tuple[float, float] = BRAIN_WINDOW) -> torch.Tensor:
    """HU -> [0, 1] over `window`, clipped."""
    low, high = window
    return (hounsfield.float().clamp(low, high) - low) / (high - low)


def small_regressor() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True), nn.MaxPool2d(2))

    return nn.Sequential(block(1, 12), block(12, 24), block(24, 48), block(48, 64), block(64, 96),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(96, 1))


def train_regressor(images: torch.Tensor, ages: torch.Tensor, epochs: int, seed: int,
                    progress: bool = True) -> tuple[nn.Module, list[float]]:
    """Train on (N, 1, H, W) windowed slices and their ages (years); return the model in eval mode and
    the mean loss of each epoch. Initial weights, dropout and batch order follow `seed` alone."""
    if images.shape[-1] < MIN_SIDE or images.shape[-2] < MIN_SIDE:
        raise ValueError(f"the age regressor needs slices of at least {MIN_SIDE} px, got {tuple(images.shape[-2:])}")
    generator = torch.Generator().manual_seed(seed)
    # Layer initialisation and dropout draw from the global generator: seeded for the run, restored after.
    with global_rng_seeded(seed):
        model = small_regressor()
        optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        batch = 64
        steps = epochs * ((len(images) + batch - 1) // batch)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
        target = (ages.float() - AGE_CENTRE) / AGE_SCALE
        losses = []
        for _ in tqdm(range(epochs), desc="age regressor", unit="epoch", disable=not progress):
            model.train()
            order = torch.randperm(len(images), generator=generator)
            total = 0.0
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                x = images[idx]
                # Left-right flips keep age and double the anatomy seen.
                flip = torch.rand(len(idx), generator=generator) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss = nn.functional.smooth_l1_loss(model(x)[:, 0], target[idx])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                total += loss.item() * len(idx)
            losses.append(round(total / len(order), 4))
    return model.eval(), losses


def predict_ages(model: nn.Module, images: torch.Tensor, chunk: int = 256) -> np.ndarray:
    """Predicted ages in years of (N, 1, H, W) windowed slices."""
    with torch.no_grad():
        predicted = torch.cat([model(images[i:i + chunk])[:, 0] for i in range(0, len(images), chunk)])
    return (predicted * AGE_SCALE + AGE_CENTRE).numpy()


def age_errors(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """MAE, RMSE, mean bias (predicted - true) in years and Pearson r of predictions against ages."""
    error = np.asarray(predicted, np.float64) - np.asarray(truth, np.float64)
    spread = len(truth) > 1 and np.std(truth) > 0 and np.std(predicted) > 0
    return {"count": int(len(truth)), "mae_years": float(np.abs(error).mean()),
            "rmse_years": float(np.sqrt((error ** 2).mean())), "bias_years": float(error.mean()),
            "pearson_r": float(np.corrcoef(predicted, truth)[0, 1]) if spread else float("nan")}
