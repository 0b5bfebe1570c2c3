"""Train the judge classifier, export it as a bundle, and read images with it.

`train_judge` fits factory.models.judge (a torchvision ResNet-18, multi-label) from scratch with a
plain torch loop on phantom chest X-rays, drawn at the judge's size, or on any StudyDataset (images
resized to it). A seeded share of the studies is held out; per-label and macro ROC-AUC on it go
into the bundle's metrics (`macro_auc`, `auc/<label>`), so every later figure computed with the
judge can be read against what the judge itself can tell on real data.

`Judge` loads such a bundle and gives penultimate `features` (for FID, KID, the memorization audit)
and sigmoid `probabilities` (label fidelity, the Inception-Score analogue) of any batch of images.

The phantoms come from seed 1 by default, not 0: training configs draw the generator's phantoms
from seed 0, and a judge that never saw those studies keeps real-vs-real comparisons honest.
Labels follow CheXpert values; only 1 counts as present (0, -1 and NaN are absent).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from factory.data.labels import CXR_LABELS
from factory.errors import BadInputError
from factory.evaluate.image_metrics import multilabel_auc, present
from factory.seeding import global_rng_seeded

RECIPE = "judge"
DEFAULT_PHANTOM_SEED = 1


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_judge_input(images: Any, size: int, source: str = "images") -> torch.Tensor:
    """Images as a float32 (N, 1, size, size) tensor in [0, 1] on the CPU.

    Accepts numpy arrays or torch tensors shaped (H, W) (one image), (N, H, W) or (N, C, H, W) with
    C = 1 or 3 (RGB is averaged to grey); uint8 (/255), uint16 (/65535, 16-bit PNG shards), or floats
    already in [0, 1]. Other sizes are resized with antialiased bilinear interpolation; non-square
    images are stretched to the square the judge was trained on."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(tensor, torch.Tensor):
        raise BadInputError(source, f"expected a numpy array or torch tensor, got {type(images).__name__}")
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.uint8:
        tensor = tensor.float().div_(255.0)
    elif tensor.dtype == torch.uint16:
        tensor = tensor.to(torch.int32).float().div_(65535.0)
    elif tensor.is_floating_point():
        tensor = tensor.float()
        if tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise BadInputError(source, "contain NaN or infinite values")
        if tensor.numel() and (float(tensor.min()) < 0.0 or float(tensor.max()) > 1.0):
            raise BadInputError(source, f"float images must lie in [0, 1], found [{float(tensor.min()):.3g}, "
                                        f"{float(tensor.max()):.3g}]")
    else:
        raise BadInputError(source, f"unsupported dtype {tensor.dtype}: give uint8, uint16 or float in [0, 1]")
    if tensor.ndim == 2:
        tensor = tensor[None, None]
    elif tensor.ndim == 3:
        tensor = tensor[:, None]
    elif tensor.ndim != 4:
        raise BadInputError(source, f"expected (H, W), (N, H, W) or (N, C, H, W) images, got shape {tuple(tensor.shape)}")
    if tensor.shape[1] == 3:
        tensor = tensor.mean(dim=1, keepdim=True)
    elif tensor.shape[1] != 1:
        raise BadInputError(source, f"images need 1 or 3 channels, got {tensor.shape[1]}")
    if tensor.shape[0] and tuple(tensor.shape[-2:]) != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        tensor = tensor.clamp_(0.0, 1.0)  # bilinear can overshoot by round-off
    return tensor


class Judge:
    """A trained judge, batched and without gradients, on the GPU when one is available."""

    def __init__(self, net: nn.Module, label_names: Sequence[str], device: str | torch.device | None = None,
                 batch_size: int = 256, bundle_id: str | None = None, metrics: dict[str, Any] | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.net = net.to(self.device).eval()
        self.label_names = list(label_names)
        self.image_size = int(net.image_size)
        self.batch_size = batch_size
        self.bundle_id = bundle_id
        self.metrics = dict(metrics or {})

    @classmethod
    def load(cls, url: str, device: str | torch.device | None = None, batch_size: int = 256) -> Judge:
        """Load (and verify) a judge bundle written by `train_judge`."""
        from factory.models.bundle import load_bundle

        device = torch.device(device) if device is not None else default_device()
        bundle = load_bundle(url, device=device)
        if bundle.recipe != RECIPE:
            raise BadInputError(url, f"is a {bundle.recipe!r} bundle, not a judge")
        return cls(bundle.nets["judge"], bundle.label_names, device=device, batch_size=batch_size,
                   bundle_id=bundle.bundle_id, metrics=bundle.metadata["metrics"])

    @property
    def num_features(self) -> int:
        return int(self.net.num_features)

    @torch.no_grad()
    def evaluate(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, D) float32, probabilities (N, K) float32) in one pass over the images."""
        if not isinstance(images, (np.ndarray, torch.Tensor)):
            raise BadInputError("images", f"expected a numpy array or torch tensor, got {type(images).__name__}")
        if images.ndim == 2:
            images = images[None]
        features, probabilities = [], []
        for start in range(0, images.shape[0], self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = to_judge_input(chunk, self.image_size).to(self.device)
            h = self.net.features(batch)
            features.append(h.float().cpu())
            probabilities.append(torch.sigmoid(self.net.head(h)).float().cpu())
        if not features:
            return (np.zeros((0, self.num_features), np.float32), np.zeros((0, len(self.label_names)), np.float32))
        return torch.cat(features).numpy(), torch.cat(probabilities).numpy()

    def features(self, images: Any) -> np.ndarray:
        """Penultimate features (N, D): the feature space of FID and KID."""
        return self.evaluate(images)[0]

    def probabilities(self, images: Any) -> np.ndarray:
        """Per-label probabilities (N, K), columns in `label_names` order."""
        return self.evaluate(images)[1]


@dataclass
class JudgeData:
    """Training material in memory: images (N, 1, S, S) float32 in [0, 1], labels (N, K) with CheXpert values."""

    images: np.ndarray
    labels: np.ndarray
    study_ids: list[str]
    label_names: list[str]
    description: str

    def fingerprint(self) -> str:
        """sha256 over study ids and labels, as the training runner fingerprints its data."""
        digest = hashlib.sha256()
        for study_id in self.study_ids:
            digest.update(str(study_id).encode() + b"\0")
        digest.update(np.ascontiguousarray(self.labels, dtype=np.float32).tobytes())
        return digest.hexdigest()


def phantom_data(count: int, size: int = 64, seed: int = DEFAULT_PHANTOM_SEED) -> JudgeData:
    """`count` phantom chest X-rays of study seed `seed`, drawn at `size` pixels."""
    from factory.data.phantoms.cxr import phantom_arrays

    if count < 1:
        raise BadInputError("phantom", f"count must be positive, got {count}")
    images, labels = phantom_arrays(seed, 0, count, size, size)
    return JudgeData(images, labels, [f"cxr-{seed}-{i:08d}" for i in range(count)], list(CXR_LABELS),
                     f"phantom-cxr seed={seed} count={count} size={size}")


def dataset_data(dataset, size: int = 64, progress: bool = True) -> JudgeData:
    """Every study of a StudyDataset (real layouts through factory.data.adapters, the Zarr cache, or
    the phantom), images resized to `size` as the Judge resizes what it reads."""
    if len(dataset) < 1:
        raise BadInputError(type(dataset).__name__, "the dataset has no studies")
    images = np.empty((len(dataset), 1, size, size), np.float32)
    labels = np.empty((len(dataset), len(dataset.label_names)), np.float32)
    ids = []
    for i in tqdm(range(len(dataset)), desc="studies", unit="study", disable=not progress):
        study = dataset[i]
        if study.image.ndim != 3:
            raise BadInputError(study.study_id, f"the judge reads 2-D images (C, H, W), got shape {tuple(study.image.shape)}")
        images[i] = to_judge_input(study.image[None], size, study.study_id)[0].numpy()
        labels[i] = np.asarray(study.labels, np.float32)
        ids.append(study.study_id)
    return JudgeData(images, labels, ids, list(dataset.label_names), f"{type(dataset).__name__} count={len(dataset)}")


@dataclass
class JudgeResult:
    judge: Judge
    metadata: dict[str, Any]  # the bundle's metadata (bundle_id, sha256, metrics, ...)
    auc: dict[str, float]  # held-out ROC-AUC per label (NaN where undefined)
    macro_auc: float
    positives: dict[str, int]  # held-out positives per label
    train_count: int
    test_count: int
    wall_s: float
    history: list[float] = field(default_factory=list)  # mean training loss per epoch


def split_indices(count: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, test) index split; the test part has round(count * test_fraction) >= 1 studies."""
    if not 0.0 < test_fraction < 1.0:
        raise BadInputError("test_fraction", f"must lie in (0, 1), got {test_fraction}")
    n_test = max(1, int(round(count * test_fraction)))
    if count - n_test < 1:
        raise BadInputError("judge", f"{count} studies leave nothing to train on after holding out {n_test}")
    order = np.random.default_rng([seed, 7]).permutation(count)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _fit(net: nn.Module, images: torch.Tensor, targets: torch.Tensor, epochs: int, batch_size: int, lr: float,
         seed: int, device: torch.device, progress: bool) -> list[float]:
    """AdamW with a one-cycle schedule on binary cross-entropy; batches in a seeded order."""
    order_gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=epochs * steps_per_epoch)
    loss_fn = nn.BCEWithLogitsLoss()
    history = []
    net.train()
    with tqdm(total=epochs * steps_per_epoch, desc="judge", unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            total = 0.0
            for idx in torch.randperm(len(images), generator=order_gen).split(batch_size):
                x, y = images[idx].to(device), targets[idx].to(device)
                loss = loss_fn(net(x), y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                total += float(loss.detach()) * len(idx)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                bar.update()
            history.append(total / len(images))
    net.eval()
    return history


def train_judge(out: str, *, data: JudgeData | None = None, count: int = 10000, size: int = 64, epochs: int = 3,
                seed: int = 0, phantom_seed: int = DEFAULT_PHANTOM_SEED, test_fraction: float = 0.2,
                batch_size: int = 64, lr: float = 3e-3, arch: str = "resnet18",
                device: str | torch.device | None = None, progress: bool = True) -> JudgeResult:
    """Train a judge, test it on a held-out split and write it as a bundle (recipe "judge") to `out`.

    `data` defaults to `count` phantoms of `phantom_seed` drawn at `size` (see `phantom_data`; use
    `dataset_data` for a StudyDataset). `seed` fixes the split, the initial weights, dropout and the
    batch order, so the same arguments on the same machine give the same judge.

    Defaults (10,000 phantoms, 3 epochs: 375 steps) were chosen on this 2-CPU machine: for a fixed
    number of steps, more distinct studies beat more epochs for an 11M-parameter ResNet (figures:
    docs/bench/judge.md)."""
    from factory.models import registry
    from factory.models.bundle import write_bundle

    start = time.perf_counter()
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise BadInputError("judge", f"epochs ({epochs}) and batch_size ({batch_size}) must be positive, lr ({lr}) too")
    if data is None:
        data = phantom_data(count, size, phantom_seed)
    if data.images.ndim != 4 or data.images.shape[1] != 1 or data.images.shape[2] != data.images.shape[3]:
        raise BadInputError("judge data", f"images must be (N, 1, S, S), got {data.images.shape}")
    if data.labels.shape != (len(data.images), len(data.label_names)):
        raise BadInputError("judge data", f"labels {data.labels.shape} do not match {len(data.images)} images "
                                          f"and {len(data.label_names)} label names")
    size = int(data.images.shape[-1])
    try:
        config = registry.make_config(RECIPE, {"arch": arch, "image_size": size, "num_labels": len(data.label_names)})
    except ValueError as err:
        raise BadInputError("judge", str(err)) from err
    device = torch.device(device) if device is not None else default_device()
    train_idx, test_idx = split_indices(len(data.images), test_fraction, seed)
    images = torch.from_numpy(data.images)
    targets = torch.from_numpy(present(data.labels).astype(np.float32))

    # Initial weights and dropout draw from torch's global generators.
    with global_rng_seeded(seed, device):
        net = registry.build_networks(RECIPE, config)["judge"].to(device)
        history = _fit(net, images[train_idx], targets[train_idx], epochs, batch_size, lr, seed, device, progress)

    judge = Judge(net, data.label_names, device=device)
    probabilities = judge.probabilities(images[test_idx])
    scores = multilabel_auc(probabilities, data.labels[test_idx], data.label_names)
    metrics: dict[str, Any] = {"macro_auc": _json_number(scores["macro_auc"]),
                               **{f"auc/{name}": _json_number(v) for name, v in scores["auc"].items()},
                               "train_count": len(train_idx), "test_count": len(test_idx), "epochs": epochs,
                               "final_train_loss": history[-1], "seed": seed}
    metadata = write_bundle(
        out, RECIPE, {"judge": net}, config, data.label_names, None,
        training_data={"fingerprint": data.fingerprint(), "count": len(data.images),
                       "description": f"{data.description}; held out {len(test_idx)} (split seed {seed})"},
        metrics=metrics, trained=True)
    judge.bundle_id, judge.metrics = metadata["bundle_id"], metadata["metrics"]
    return JudgeResult(judge=judge, metadata=metadata, auc=scores["auc"], macro_auc=scores["macro_auc"],
                       positives=scores["positives"], train_count=len(train_idx), test_count=len(test_idx),
                       wall_s=time.perf_counter() - start, history=history)


def auc_table(auc: dict[str, float], positives: dict[str, int], macro: float) -> str:
    """Markdown table of held-out AUCs."""
    lines = ["| label | AUC | test positives |", "|---|---|---|"]
    lines += [f"| {name} | {value:.3f} | {positives.get(name, 0)} |" for name, value in auc.items()]
    lines.append(f"| **macro** | **{macro:.3f}** | |")
    return "\n".join(lines)


def _json_number(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)
