"""EMIXER's augmentation study: does adding synthetic samples to R real ones help a classifier on held-out real?

EMIXER (section 4.4.1, Table 1) trains an X-ray classifier on R real images, then on R real plus S
synthetic for growing S, scores each on held-out real images and reports AUC (and accuracy) as a mean
and spread over repeated runs. `augmentation_study` repeats that on the data at hand:

    from factory.data.adapters import open_dataset            # or factory.data.phantoms.dataset.PhantomCxrDataset
    from factory.evaluate.augment import augmentation_study, plot, table_markdown

    result = augmentation_study(open_dataset("/data/mimic", "mimic-cxr"), "s3://bucket/runs/pairs",
                                real_counts=[200], synthetic_counts=[0, 100, 200, 400], seeds=[0, 1, 2])
    print(table_markdown(result))
    plot(result, "augment.png")

The design, per seed s (every random choice is drawn from s and a fixed tag, nothing from global state):

- Real: a seeded permutation of the real dataset; its first `test_count` studies are the held-out
  test set of seed s, the next max(R) the training pool, and arm R trains on the first R of that pool
  (nested: the 50 of R=50 are among the 100 of R=100). Train and test never share a study.
- Synthetic: the first `synthetic_pool` samples of the run in manifest order (default: all of them)
  are read once through factory.stream; arm S takes the first S of a seeded permutation of them (nested too).
- Classifier: the judge's architecture (factory.models.judge, a torchvision ResNet-18 by default),
  built from scratch with initial weights from s, trained by the judge's own loop
  (factory.evaluate.judge._fit: AdamW, one-cycle, binary cross-entropy, batch order from s), scored
  with image_metrics.multilabel_auc on the test set of s.
- All arms of one seed share the test set, the real training studies (for equal R), the initial
  weights and the batch-order seed: they differ only in the synthetic samples added, so the paired
  difference to S=0 (`delta_macro_auc`) is reported next to the plain means.

Budget: every arm gets the same number of parameter updates, not the same number of epochs. With
equal epochs the arm with R + S samples would also get (R + S) / R times as many updates as R alone, and
a gain could come from training longer rather than from the data; at small R the real-only arm would
barely train at all. So each arm's training set is tiled (concatenated seeded permutations, cut to
`epoch_size` samples, default max(R) + max(S), the largest arm) and trained for `epochs` passes over
that: epochs x ceil(epoch_size / batch_size) updates for every arm, each sample of an arm seen as
equally often as the tiling allows. The largest arm sees its data `epochs` times; smaller arms see theirs
more often, as one would train a model on a small set. Give `epoch_size` explicitly to make the budget
independent of the S list (then the S=0 arm of a seed is the same whatever other S are studied).

The result is a plain dict (JSON-ready, undefined AUCs as None): `settings`, `arms` (per (R, S): mean
and sample standard deviation over seeds of the macro-AUC, the paired gain over S=0, per-label AUC,
accuracy and final training loss) and `runs` (every (seed, R, S) with its numbers). `table_markdown`,
`plot` and `write_study` render it.
"""

from __future__ import annotations

import math
import time
from itertools import islice
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from factory.errors import BadInputError
from factory.evaluate.image_metrics import multilabel_auc, present
from factory.seeding import global_rng_seeded

# Tags that keep the seeded draws of one seed apart from each other (and from the judge's split tag 7).
_REAL_TAG, _SYNTHETIC_TAG, _TILE_TAG = 101, 102, 103
MIN_SEEDS_FOR_SPREAD = 2


def _positive_ints(values: Sequence[int] | int, name: str, allow_zero: bool) -> list[int]:
    values = [values] if isinstance(values, int) else list(values)
    low = 0 if allow_zero else 1
    if not values or any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low for v in values):
        raise BadInputError("augment", f"{name} must be a non-empty list of integers >= {low}, got {values!r}")
    if len(set(values)) != len(values):
        raise BadInputError("augment", f"{name} repeats a value: {values!r}")
    return sorted(int(v) for v in values)


def real_split(count: int, max_real: int, test_count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training pool of max_real indices, test indices) into a real dataset of `count` studies, for one
    seed; disjoint. Arm R trains on pool[:R]."""
    order = np.random.default_rng([seed, _REAL_TAG]).permutation(count)
    return order[test_count:test_count + max_real], order[:test_count]


def synthetic_choice(pool: int, seed: int) -> np.ndarray:
    """The seeded order in which a seed takes synthetic samples: arm S adds the first S of it."""
    return np.random.default_rng([seed, _SYNTHETIC_TAG]).permutation(pool)


def tile(count: int, length: int, seed: int, real: int, synthetic: int) -> np.ndarray:
    """Indices 0..count-1 laid out to `length`: whole seeded permutations, then part of one more."""
    rng = np.random.default_rng([seed, _TILE_TAG, real, synthetic])
    reps = -(-length // count)
    return np.concatenate([rng.permutation(count) for _ in range(reps)])[:length]


def _load_real(dataset, indices: np.ndarray, size: int, progress: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from factory.evaluate.judge import to_judge_input

    images = np.empty((len(indices), 1, size, size), np.float32)
    labels = np.empty((len(indices), len(dataset.label_names)), np.float32)
    ids = []
    for row, index in enumerate(tqdm(indices, desc="real studies", unit="study", disable=not progress)):
        study = dataset[int(index)]
        if study.image.ndim != 3:
            raise BadInputError(study.study_id,
                                f"the classifier reads 2-D images (C, H, W), got {tuple(study.image.shape)}")
        images[row] = to_judge_input(study.image[None].float(), size, study.study_id)[0].numpy()
        labels[row] = np.asarray(study.labels, np.float32)
        ids.append(study.study_id)
    return images, labels, ids


def _load_synthetic(url: str, pool: int | None, needed: int, size: int, label_names: Sequence[str],
                    storage_options, progress: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from factory.evaluate.judge import to_judge_input
    from factory.stream import open_run

    stream = open_run(url, label_names=label_names, storage_options=storage_options)
    available = stream.num_samples
    pool = available if pool is None else int(pool)
    if pool > available:
        raise BadInputError(url, f"synthetic_pool {pool} exceeds the run's {available} samples")
    if pool < needed:
        raise BadInputError(url, f"the largest synthetic count is {needed} but only {pool} run samples are read "
                                 f"(the run holds {available})")
    images = np.empty((pool, 1, size, size), np.float32)
    labels = np.empty((pool, len(label_names)), np.float32)
    read = 0
    for sample in tqdm(islice(stream, pool), total=pool, desc="synthetic samples", unit="sample", disable=not progress):
        image = sample["image"]
        if image.ndim != 3:
            raise BadInputError(str(sample["__url__"]), f"sample {sample['__key__']}: image shape {tuple(image.shape)}")
        images[read] = to_judge_input(image[None], size, str(sample["__key__"]))[0].numpy()
        labels[read] = sample["labels"].numpy()
        read += 1
    if read < pool:  # quality gates may have dropped samples the manifest count still names
        raise BadInputError(url, f"read {read} samples, expected {pool}")
    info = {"url": stream.url, "run_id": stream.manifest.get("run_id"), "count": available, "pool": pool}
    return images, labels, info


def train_arm(images: np.ndarray, labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
              label_names: Sequence[str], *, seed: int, epochs: int, batch_size: int, lr: float, arch: str,
              device: torch.device) -> dict[str, Any]:
    """Train one classifier from scratch on (images, labels) — already tiled to the arm's epoch —
    for `epochs` passes with the judge's loop, and score it on the test set. Initial weights, dropout
    and batch order come from `seed` alone. Returns {"macro_auc", "auc", "accuracy", "final_loss"}."""
    from factory.evaluate.judge import Judge, _fit
    from factory.models import registry

    size = int(images.shape[-1])
    try:
        config = registry.make_config("judge", {"arch": arch, "image_size": size, "num_labels": len(label_names)})
    except ValueError as err:
        raise BadInputError("augment", str(err)) from err
    targets = torch.from_numpy(present(labels).astype(np.float32))
    with global_rng_seeded(seed, device):
        net = registry.build_networks("judge", config)["judge"].to(device)
        history = _fit(net, torch.from_numpy(images), targets, epochs, batch_size, lr, seed, device, False)
    probabilities = Judge(net, label_names, device=device).probabilities(test_images)
    scores = multilabel_auc(probabilities, test_labels, label_names)
    truth = present(test_labels)
    return {"macro_auc": scores["macro_auc"], "auc": scores["auc"],
            "accuracy": float(((probabilities >= 0.5) == truth).mean()), "final_loss": float(history[-1])}


def augmentation_study(
    real,
    synthetic_run_url: str | None,
    *,
    real_counts: Sequence[int] | int,
    synthetic_counts: Sequence[int] = (0,),
    test_count: int = 500,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 8,
    epoch_size: int | None = None,
    batch_size: int = 64,
    lr: float = 3e-3,
    size: int = 64,
    arch: str = "resnet18",
    synthetic_pool: int | None = None,
    device: str | torch.device | None = None,
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the judge architecture on R real (+ S synthetic) samples for every R in `real_counts`, S in
    `synthetic_counts` and seed in `seeds`; score each on `test_count` held-out real studies.

    real: a StudyDataset of 2-D studies (factory.data.adapters.open_dataset, PhantomCxrDataset, ...);
        needs test_count + max(real_counts) studies. Its label names are the classifier's outputs.
    synthetic_run_url: a finished run (local folder or s3://), read with factory.stream.open_run;
        None only when every synthetic count is 0.
    epochs, epoch_size, batch_size: the equal update budget of every arm (see the module docstring):
        epochs * ceil(epoch_size / batch_size) updates, epoch_size defaulting to max(R) + max(S).
    size: image side (real and synthetic images are resized to it, as the judge reads them).
    synthetic_pool: run samples read (in manifest order) for the seeded choice; default the whole run.
    Returns the result dict described in the module docstring."""
    from factory.evaluate.judge import default_device

    start = time.perf_counter()
    real_counts = _positive_ints(real_counts, "real_counts", allow_zero=False)
    synthetic_counts = _positive_ints(synthetic_counts, "synthetic_counts", allow_zero=True)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise BadInputError("augment", f"seeds must be a non-empty list of distinct integers, got {seeds!r}")
    for name, value in (("test_count", test_count), ("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadInputError("augment", f"{name} must be a positive integer, got {value!r}")
    if lr <= 0:
        raise BadInputError("augment", f"lr must be positive, got {lr}")
    max_real, max_synthetic = real_counts[-1], synthetic_counts[-1]
    if test_count + max_real > len(real):
        raise BadInputError("augment", f"the real dataset has {len(real)} studies: too few for {test_count} held out "
                                       f"plus {max_real} to train on")
    if epoch_size is None:
        epoch_size = max_real + max_synthetic
    if not isinstance(epoch_size, int) or epoch_size < 1:
        raise BadInputError("augment", f"epoch_size must be a positive integer, got {epoch_size!r}")
    if max_synthetic > 0 and synthetic_run_url is None:
        raise BadInputError("augment", "synthetic counts above 0 need a synthetic run")
    device = torch.device(device) if device is not None else default_device()
    label_names = list(real.label_names)

    # Real studies: load every one some seed needs, once.
    splits = {seed: real_split(len(real), max_real, test_count, seed) for seed in seeds}
    needed = np.unique(np.concatenate([np.concatenate(split) for split in splits.values()]))
    real_images, real_labels, _ = _load_real(real, needed, size, progress)
    row_of = {int(index): row for row, index in enumerate(needed)}

    synthetic_info: dict[str, Any] = {"url": synthetic_run_url, "run_id": None, "count": 0, "pool": 0}
    synthetic_images = np.zeros((0, 1, size, size), np.float32)
    synthetic_labels = np.zeros((0, len(label_names)), np.float32)
    if synthetic_run_url is not None and max_synthetic > 0:
        synthetic_images, synthetic_labels, synthetic_info = _load_synthetic(
            synthetic_run_url, synthetic_pool, max_synthetic, size, label_names, storage_options, progress)

    updates = epochs * math.ceil(epoch_size / batch_size)
    runs: list[dict[str, Any]] = []
    arms = [(seed, r, s) for seed in seeds for r in real_counts for s in synthetic_counts]
    with tqdm(arms, desc="augment arms", unit="arm", disable=not progress) as bar:
        for seed, r, s in bar:
            bar.set_postfix(seed=seed, R=r, S=s)
            arm_start = time.perf_counter()
            pool, test = splits[seed]
            train_rows = np.array([row_of[int(i)] for i in pool[:r]])
            test_rows = np.array([row_of[int(i)] for i in test])
            chosen = synthetic_choice(len(synthetic_images), seed)[:s] if s else np.zeros(0, np.int64)
            images = np.concatenate([real_images[train_rows], synthetic_images[chosen]])
            labels = np.concatenate([real_labels[train_rows], synthetic_labels[chosen]])
            order = tile(len(images), epoch_size, seed, r, s)
            scores = train_arm(images[order], labels[order], real_images[test_rows], real_labels[test_rows],
                               label_names, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, arch=arch,
                               device=device)
            runs.append({"seed": seed, "real": r, "synthetic": s, **scores,
                         "test_positives": {name: int(v) for name, v in
                                            zip(label_names, present(real_labels[test_rows]).sum(axis=0))},
                         "wall_s": time.perf_counter() - arm_start})
            bar.set_postfix(seed=seed, R=r, S=s, auc=f"{scores['macro_auc']:.3f}")

    result = {
        "settings": {
            "real": {"description": _describe(real), "count": len(real)},
            "synthetic": synthetic_info,
            "real_counts": real_counts, "synthetic_counts": synthetic_counts, "test_count": test_count,
            "seeds": seeds, "epochs": epochs, "epoch_size": epoch_size, "batch_size": batch_size,
            "updates_per_arm": updates, "budget": "equal updates per arm", "lr": lr, "size": size, "arch": arch,
            "device": str(device), "label_names": label_names,
        },
        "arms": _summarise(runs, real_counts, synthetic_counts, label_names),
        "runs": [_jsonable(run) for run in runs],
        "wall_s": time.perf_counter() - start,
    }
    return result


def _describe(dataset) -> str:
    parts = [type(dataset).__name__]
    for attribute in ("root", "seed", "size"):
        if getattr(dataset, attribute, None) is not None:
            parts.append(f"{attribute}={getattr(dataset, attribute)}")
    return " ".join(parts)


def _stat(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation over the defined values (None when undefined)."""
    defined = [v for v in values if v is not None and not math.isnan(v)]
    mean = float(np.mean(defined)) if defined else None
    std = float(np.std(defined, ddof=1)) if len(defined) >= MIN_SEEDS_FOR_SPREAD else None
    return {"mean": mean, "std": std, "n": len(defined)}


def _summarise(runs, real_counts, synthetic_counts, label_names) -> list[dict[str, Any]]:
    by_key = {(run["seed"], run["real"], run["synthetic"]): run for run in runs}
    seeds = sorted({run["seed"] for run in runs})
    arms = []
    for r in real_counts:
        for s in synthetic_counts:
            chosen = [by_key[(seed, r, s)] for seed in seeds]
            arm = {"real": r, "synthetic": s, "seeds": len(chosen),
                   "macro_auc": _stat([run["macro_auc"] for run in chosen]),
                   "accuracy": _stat([run["accuracy"] for run in chosen]),
                   # the training loss at the end: near 0 where an arm memorised its set, high where the
                   # equal update budget left a large arm under-trained
                   "final_loss": _stat([run["final_loss"] for run in chosen]),
                   "auc": {name: _stat([run["auc"][name] for run in chosen]) for name in label_names},
                   "delta_macro_auc": None}
            if 0 in synthetic_counts:
                arm["delta_macro_auc"] = _stat([run["macro_auc"] - by_key[(run["seed"], r, 0)]["macro_auc"]
                                                for run in chosen])
            arms.append(arm)
    return arms


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _pm(stat: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    if not stat or stat["mean"] is None:
        return "–"
    mean = f"{stat['mean']:+.{digits}f}" if signed else f"{stat['mean']:.{digits}f}"
    return mean if stat["std"] is None else f"{mean} ± {stat['std']:.{digits}f}"


def table_markdown(result: dict[str, Any], per_label: bool = True) -> str:
    """Markdown: one row per (R, S) with macro-AUC, paired gain over S=0, accuracy and the final training
    loss (mean ± sample standard deviation over seeds); then, with `per_label`, the mean per-label AUC of every arm."""
    settings = result["settings"]
    lines = [f"Held-out real: {settings['test_count']} studies per seed; seeds {settings['seeds']}; "
             f"{settings['arch']} at {settings['size']} px, {settings['updates_per_arm']} updates per arm "
             f"(batch {settings['batch_size']}).", "",
             "| real R | synthetic S | S/R | macro-AUC | Δ vs S=0 (paired) | accuracy | final train loss |",
             "|---:|---:|---:|---|---|---|---|"]
    for arm in result["arms"]:
        lines.append(f"| {arm['real']} | {arm['synthetic']} | {arm['synthetic'] / arm['real']:.2g} | "
                     f"{_pm(arm['macro_auc'])} | {_pm(arm['delta_macro_auc'], signed=True)} | {_pm(arm['accuracy'])} | "
                     f"{_pm(arm.get('final_loss'))} |")
    if per_label:
        header = [f"R{arm['real']}+S{arm['synthetic']}" for arm in result["arms"]]
        lines += ["", "| label | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
        for name in settings["label_names"]:
            cells = [_pm({**arm["auc"][name], "std": None}) for arm in result["arms"]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str, storage_options: dict | None = None) -> str:
    """Write `plot_png(result)` to `path` (a local path or fsspec URL). Returns `path`."""
    from factory import storage

    storage.atomic_put(path, plot_png(result), storage_options)
    return path


def plot_png(result: dict[str, Any]) -> bytes:
    """PNG bytes: held-out macro-AUC against the synthetic count S, one line per R (mean over seeds,
    band of one standard deviation either side, dots for single seeds); beside it, when S=0 was
    studied, the paired gain over S=0."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    paired = 0 in settings["synthetic_counts"] and len(settings["synthetic_counts"]) > 1
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(11 if paired else 6, 4.2), squeeze=False)
    panels = [("macro_auc", "held-out real macro-AUC")] + ([("delta_macro_auc", "gain over S=0 (paired, same seed)")]
                                                           if paired else [])
    runs = result["runs"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, ylabel) in zip(axes[0], panels):
        for i, r in enumerate(settings["real_counts"]):
            colour = colours[i % len(colours)]
            arms = [arm for arm in result["arms"] if arm["real"] == r and arm[key] and arm[key]["mean"] is not None]
            xs = np.array([arm["synthetic"] for arm in arms], float)
            means = np.array([arm[key]["mean"] for arm in arms])
            stds = np.array([arm[key]["std"] or 0.0 for arm in arms])
            ax.plot(xs, means, "o-", color=colour, label=f"R = {r} real (mean ± sd)")
            ax.fill_between(xs, means - stds, means + stds, color=colour, alpha=0.2)
            points = [(run["synthetic"], _seed_value(run, runs, key)) for run in runs if run["real"] == r]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                ax.scatter(*zip(*points), color=colour, s=12, alpha=0.5, label="single seeds" if i == 0 else None)
        if key == "delta_macro_auc":
            ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("synthetic samples added (S)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Augmentation study: {len(settings['seeds'])} seeds, "
                 f"{settings['test_count']} held-out real per seed, "
                 f"{settings['arch']} at {settings['size']} px, {settings['updates_per_arm']} updates per arm",
                 fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def write_study(result: dict[str, Any], out: str, storage_options: dict | None = None) -> dict[str, str]:
    """Write augment.json (the result), augment.md (`table_markdown`) and augment.png (`plot_png`)
    into the folder `out` (local path or fsspec URL). Returns {"json", "table", "plot"} -> URL."""
    import json

    from factory import storage

    urls = {"json": storage.join(out, "augment.json"), "table": storage.join(out, "augment.md"),
            "plot": storage.join(out, "augment.png")}
    storage.atomic_put(urls["json"], json.dumps(result, indent=1).encode(), storage_options)
    storage.atomic_put(urls["table"], (table_markdown(result) + "\n").encode(), storage_options)
    storage.atomic_put(urls["plot"], plot_png(result), storage_options)
    return urls


def _seed_value(run: dict[str, Any], runs: list[dict[str, Any]], key: str) -> float | None:
    if key == "macro_auc":
        return run["macro_auc"]
    base = next(o for o in runs if o["seed"] == run["seed"] and o["real"] == run["real"] and o["synthetic"] == 0)
    if run["macro_auc"] is None or base["macro_auc"] is None:
        return None
    return run["macro_auc"] - base["macro_auc"]
