"""`medsynth evaluate RUN_URL` on a translation run: what a user of translated CT needs to know.

For the first `count` translated slices of the run (in index order, so the report is reproducible):
- Hounsfield units: range, percentiles and the share outside the window the model represents, and the
  histogram within that window, against real CT (the brain phantom's CT, or a real CT dataset in the
  volumes layout) with the 1-D Wasserstein distance between the two distributions, next to the same
  distance between two halves of the real CT (the floor at this many slices);
- against a paired reference, where one exists: SSIM and PSNR (torchmetrics, on the window mapped
  onto [0, 1]) and the mean absolute error in HU of each translated slice against the CT of the same
  subject and slice. Phantom sources (study ids `brain-{mri|pet}-{seed}-{index}` whose age and grid
  match the phantom) have one: `paired_ct` of factory.data.phantoms.brain renders the same head as
  CT. A real paired dataset is given as `paired` (volumes layout, CT studies named by the source
  study ids);
- age: the brain-age regressor (factory.evaluate.brain_age) trained on most of the real CT slices,
  its error on the held-out real slices (what it can do), on the translations (what age-related
  anatomy they keep) and on the paired reference slices (the floor on the same subjects).

The window is the range of Hounsfield units the bundle's model represents (a real CT passed through
its own CT encoding and back, through the generator seam), or `window` when given, or, when the
bundle cannot be read, the range the translations take.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from factory.data.hounsfield import CT_PNG_OFFSET
from factory.errors import BadInputError

PHANTOM_STUDY = re.compile(r"^brain-(mri|pet)-(\d+)-(\d+)$")
HISTOGRAM_BINS = 56
REAL_PHANTOM_SEED = 1000  # brain phantom CT patients no training config draws (those use small seeds)
GRID_SAMPLES = 12
REAL_TRAIN_SHARE = 0.8  # of the real slices, for the age regressor; the rest is held out


@dataclass
class Translated:
    hounsfield: np.ndarray  # (N, H, W) float32 HU
    sources: np.ndarray  # (N, H, W) float32, the generator's input mapped onto [0, 1]
    ages: np.ndarray  # (N,) years, NaN where the source gives none
    metas: list[dict[str, Any]]
    keys: list[str]


@dataclass
class RealCT:
    hounsfield: np.ndarray  # (N, H, W) float32 HU
    ages: np.ndarray  # (N,)
    description: str


def read_translations(run_url: str, count: int, progress: bool = True) -> Translated:
    """The first `count` samples of a translation run, in index order, through factory.stream."""
    from factory.stream import open_run

    stream = open_run(run_url, label_names=["age"], rank=0, world_size=1, scale="raw")
    hounsfield, sources, ages, metas, keys = [], [], [], [], []
    bar = tqdm(total=count, desc="translated slices", unit="slice", disable=not progress)
    for sample in stream:
        hounsfield.append(sample["images"]["ct.png"][0].numpy() - CT_PNG_OFFSET)
        sources.append(sample["images"]["src.png"][0].numpy() / 65535.0)
        ages.append(float(sample["labels"][0]))
        metas.append(sample["meta"])
        keys.append(sample["__key__"])
        bar.update()
        if len(keys) == count:
            break
    bar.close()
    if len(keys) < 2:
        raise BadInputError(run_url, f"holds {len(keys)} translated slices; the report needs at least 2")
    return Translated(np.stack(hounsfield).astype(np.float32), np.stack(sources).astype(np.float32),
                      np.asarray(ages, np.float64), metas, keys)


def represented_window(manifest: dict[str, Any]) -> tuple[float, float] | None:
    """The HU range the run's model represents: -10000 and +10000 HU through its CT encoding and back
    (factory.models.spec.Translation); None when the bundle cannot be read."""
    from factory import storage
    from factory.models import registry
    from factory.models.bundle import read_metadata
    from factory.models.spec import Translation

    bundle = ((manifest.get("config") or {}).get("producer") or {}).get("bundle")
    try:
        metadata = read_metadata(bundle)
        product = registry.spec(metadata["recipe"]).product(Translation)
    except (OSError, ValueError, KeyError, TypeError, BadInputError):
        return None
    except Exception as err:  # an object store's own errors: the window then comes from the data
        if storage.remote_problem(err) is None:
            raise
        return None
    if product is None:
        return None
    extremes = torch.tensor([-1e4, 1e4]).view(2, 1, 1, 1)
    low, high = product.ct_to_hounsfield(product.to_model_space(extremes, "ct", metadata["model_config"]),
                                         metadata["model_config"]).flatten().tolist()
    return float(low), float(high)


def _resize(planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from factory.data.adapters.volumes import resize_slices

    tensor = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32))
    if tuple(tensor.shape[1:]) == size:
        return tensor.numpy()
    return resize_slices(tensor, size).numpy()


def phantom_real_ct(count: int, size: tuple[int, int], seed: int = REAL_PHANTOM_SEED,
                    progress: bool = True) -> RealCT:
    """`count` 2-D brain phantom CT slices rendered at the translations' size (other patients than any
    training config's: phantom seed `seed`)."""
    from factory.data.phantoms.brain import generate

    planes, ages = [], []
    for index in tqdm(range(count), desc="real CT (phantom)", unit="slice", disable=not progress):
        phantom = generate(seed, index, "ct", dims=2, size=size[0])
        planes.append(phantom.image.astype(np.float32))
        ages.append(phantom.age)
    return RealCT(_resize(np.stack(planes), size), np.asarray(ages, np.float64),
                  f"brain phantom CT, {count} slices, seed {seed}")


def dataset_real_ct(dataset, count: int, size: tuple[int, int], progress: bool = True) -> RealCT:
    """Up to `count` CT slices of a volumes-layout dataset (every slice of each CT study in turn)."""
    planes, ages = [], []
    rows = [i for i, row in enumerate(dataset.rows) if row["modality"] == "ct"]
    if not rows:
        raise BadInputError(dataset.root, "has no CT studies (labels.csv modality ct) to compare with")
    with tqdm(total=count, desc="real CT", unit="slice", disable=not progress) as bar:
        for i in rows:
            study = dataset[i]
            volume = study.image[0]  # (H, W) or (D, H, W)
            volume = volume[None] if volume.ndim == 2 else volume
            for plane in volume[: count - len(planes)]:
                planes.append(_resize(plane[None].numpy(), size)[0])
                ages.append(float(study.labels[0]))
                bar.update()
            if len(planes) >= count:
                break
    if len(planes) < 2:
        raise BadInputError(dataset.root, f"has {len(planes)} CT slices; the report needs at least 2")
    return RealCT(np.stack(planes), np.asarray(ages, np.float64), f"{dataset.root}: {len(planes)} CT slices")


def _phantom_pair(rows: dict[str, dict], meta: dict[str, Any], size: tuple[int, int]):
    """The paired phantom CT volume (slices, H, W) of a phantom source study, or None when the study is
    not (recognisably) a brain phantom: its id, modality, age and grid must all match."""
    from factory.data.phantoms.brain import FIELD_OF_VIEW, anatomy, paired_ct

    found = PHANTOM_STUDY.match(meta["source_study_id"])
    row = rows.get(meta["source_study_id"])
    if not found or row is None or found.group(1) != meta["source_modality"] or not row.get("spacing"):
        return None
    modality, seed, index = found.group(1), int(found.group(2)), int(found.group(3))
    slices = int(meta["slice_count"])
    side = round(FIELD_OF_VIEW[modality] / float(row["spacing"].split()[-1]))
    dims = 3 if slices > 1 else 2
    if dims == 3 and side // 2 != slices:
        return None
    try:
        head = anatomy(seed, index, modality, 2, 32)[0]  # the age is drawn before the grid matters
    except ValueError:
        return None
    if not row["age"] or abs(round(head.age, 2) - float(row["age"])) > 1e-6:
        return None
    image = paired_ct(seed, index, modality, dims=dims, size=side).image.astype(np.float32)
    return _resize(image[None] if dims == 2 else image, size)


def paired_references(translated: Translated, size: tuple[int, int], source_root: str | None,
                      paired=None, progress: bool = True) -> tuple[np.ndarray, str | None]:
    """The paired reference slice of each translated slice, (N, H, W) HU with NaN planes where none
    exists, and where the references came from (None when there are none)."""
    from factory.data.adapters.volumes import read_labels

    references = np.full(translated.hounsfield.shape, np.nan, np.float32)
    if paired is not None:
        by_id = {row["study_id"]: i for i, row in enumerate(paired.rows) if row["modality"] == "ct"}

        def load(meta: dict[str, Any]) -> np.ndarray | None:
            found = by_id.get(meta["source_study_id"])
            return None if found is None else paired[found].image[0].numpy()  # (H, W) or (D, H, W)

        origin = f"{paired.root} (CT studies named by the source study ids)"
    elif source_root is not None:
        try:
            rows = {row["study_id"]: row for row in read_labels(source_root)}
        except (OSError, BadInputError):
            return references, None

        def load(meta: dict[str, Any]) -> np.ndarray | None:
            return _phantom_pair(rows, meta, size)

        origin = "brain phantom: the same subjects rendered as CT (factory.data.phantoms.brain.paired_ct)"
    else:
        return references, None
    cache: dict[str, Any] = {}
    for n, meta in enumerate(tqdm(translated.metas, desc="paired CT", unit="slice", disable=not progress)):
        study = meta["source_study_id"]
        if study not in cache:
            cache.clear()  # slices of a study are consecutive: keep one volume in memory
            volume = load(meta)
            if volume is not None:
                volume = volume[None] if volume.ndim == 2 else volume
                volume = _resize(volume, size)
                if len(volume) != meta["slice_count"]:
                    volume = None
            cache[study] = volume
        if cache[study] is not None:
            references[n] = cache[study][meta["slice_index"]]
    if np.isnan(references[:, 0, 0]).all():
        return references, None
    return references, origin


# --- measures ---------------------------------------------------------------------------------------

def hu_summary(values: np.ndarray, window: tuple[float, float]) -> dict[str, float]:
    flat = np.asarray(values, np.float64).ravel()
    low, high = window
    p = np.percentile(flat, [1, 5, 50, 95, 99])
    return {"min": float(flat.min()), "max": float(flat.max()), "mean": float(flat.mean()), "std": float(flat.std()),
            "p1": float(p[0]), "p5": float(p[1]), "p50": float(p[2]), "p95": float(p[3]), "p99": float(p[4]),
            "share_below_window": float((flat < low).mean()), "share_above_window": float((flat > high).mean())}


def window_histogram(values: np.ndarray, window: tuple[float, float], bins: int = HISTOGRAM_BINS) -> list[float]:
    """Shares of voxels per bin over the window, values outside it clipped into the end bins."""
    counts, _ = np.histogram(np.clip(values, *window).ravel(), bins=bins, range=window)
    return (counts / max(counts.sum(), 1)).tolist()


def wasserstein_hu(a: np.ndarray, b: np.ndarray, window: tuple[float, float], points: int = 1000) -> float:
    """1-D Wasserstein distance (HU) between two voxel distributions clipped to the window: the mean
    absolute difference of their quantile functions."""
    q = (np.arange(points) + 0.5) / points
    return float(np.abs(np.quantile(np.clip(a, *window), q) - np.quantile(np.clip(b, *window), q)).mean())


def paired_metrics(translated: np.ndarray, reference: np.ndarray, window: tuple[float, float]) -> dict[str, Any]:
    """SSIM, PSNR (torchmetrics; the window mapped onto [0, 1], data range 1) and MAE in HU (within the
    window) of each translated slice against its reference; means, spreads and per-slice values."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from factory.evaluate.brain_age import windowed

    preds = windowed(torch.from_numpy(translated)[:, None], window)
    target = windowed(torch.from_numpy(reference)[:, None], window)
    ssim = structural_similarity_index_measure(preds, target, data_range=1.0, reduction="none")
    psnr = peak_signal_noise_ratio(preds, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    mae = (preds - target).abs().mean(dim=(1, 2, 3)) * (window[1] - window[0])
    result: dict[str, Any] = {"count": int(len(preds))}
    for name, values in (("ssim", ssim), ("psnr_db", psnr), ("mae_hu", mae)):
        values = values.double().numpy()
        finite = values[np.isfinite(values)]  # PSNR of an exact copy is infinite
        result[name] = float(finite.mean()) if len(finite) else float("nan")
        result[f"{name}_sd"] = float(finite.std()) if len(finite) else float("nan")
    result["per_slice"] = {"ssim": ssim.tolist(), "psnr_db": psnr.tolist(), "mae_hu": mae.tolist()}
    return result


def measure_translation(translated: Translated, real: RealCT, references: np.ndarray, window: tuple[float, float],
                        age_epochs: int, seed: int, progress: bool = True) -> dict[str, Any]:
    from factory.evaluate.brain_age import MIN_SIDE, age_errors, predict_ages, train_regressor, windowed

    paired = ~np.isnan(references[:, 0, 0])
    half = len(real.hounsfield) // 2
    metrics: dict[str, Any] = {
        "counts": {"translated": len(translated.keys), "real": len(real.hounsfield), "paired": int(paired.sum())},
        "window": list(window),
        "hounsfield": {"translated": hu_summary(translated.hounsfield, window),
                       "real": hu_summary(real.hounsfield, window)},
        "histogram": {"edges": np.linspace(*window, HISTOGRAM_BINS + 1).tolist(),
                      "translated": window_histogram(translated.hounsfield, window),
                      "real": window_histogram(real.hounsfield, window)},
        "wasserstein_hu": {"translated_vs_real": wasserstein_hu(translated.hounsfield, real.hounsfield, window),
                           "real_vs_real": wasserstein_hu(real.hounsfield[:half], real.hounsfield[half:], window)},
    }
    by_modality: dict[str, list[int]] = {}
    for n, meta in enumerate(translated.metas):
        by_modality.setdefault(meta["source_modality"], []).append(n)
    metrics["by_source_modality"] = {m: {"count": len(rows), "hounsfield": hu_summary(translated.hounsfield[rows], window)}
                                     for m, rows in sorted(by_modality.items())}
    if paired.any():
        metrics["hounsfield"]["paired"] = hu_summary(references[paired], window)
        metrics["histogram"]["paired"] = window_histogram(references[paired], window)
        metrics["paired"] = paired_metrics(translated.hounsfield[paired], references[paired], window)
        for m, rows in by_modality.items():
            chosen = [n for n in rows if paired[n]]
            if chosen:
                found = paired_metrics(translated.hounsfield[chosen], references[chosen], window)
                metrics["by_source_modality"][m]["paired"] = {k: v for k, v in found.items() if k != "per_slice"}

    side = min(translated.hounsfield.shape[1:])
    train_count = int(round(len(real.hounsfield) * REAL_TRAIN_SHARE))
    if side < MIN_SIDE:
        metrics["age"] = {"skipped": f"slices of {side} px; the age regressor reads at least {MIN_SIDE} px"}
    elif train_count < 2 or len(real.hounsfield) - train_count < 2:
        metrics["age"] = {"skipped": f"{len(real.hounsfield)} real slices are too few to train and test it"}
    else:
        def inputs(hounsfield: np.ndarray) -> torch.Tensor:
            return windowed(torch.from_numpy(np.ascontiguousarray(hounsfield))[:, None])

        model, losses = train_regressor(inputs(real.hounsfield[:train_count]),
                                        torch.from_numpy(real.ages[:train_count]).float(), age_epochs, seed, progress)
        aged = ~np.isnan(translated.ages)
        age: dict[str, Any] = {"epochs": age_epochs, "train_slices": train_count, "train_loss_per_epoch": losses,
                               "real_held_out": age_errors(predict_ages(model, inputs(real.hounsfield[train_count:])),
                                                           real.ages[train_count:])}
        if aged.any():
            predicted = predict_ages(model, inputs(translated.hounsfield[aged]))
            age["translated"] = age_errors(predicted, translated.ages[aged])
            both = aged & paired
            if both.any():
                age["paired_reference"] = age_errors(predict_ages(model, inputs(references[both])),
                                                     translated.ages[both])
                age["translated_on_paired"] = age_errors(predict_ages(model, inputs(translated.hounsfield[both])),
                                                         translated.ages[both])
        metrics["age"] = age
    return metrics


# --- HTML -------------------------------------------------------------------------------------------

def _histogram_figure(histogram: dict[str, Any], window: tuple[float, float]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from factory.evaluate.report_html import figure_uri

    edges = np.asarray(histogram["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    figure, axis = plt.subplots(figsize=(7, 3.2))
    for key, label in (("real", "real CT"), ("paired", "paired reference"), ("translated", "translated")):
        if key in histogram:
            axis.step(centres, histogram[key], where="mid", label=label)
    axis.set_xlabel(f"Hounsfield units (window {window[0]:g} .. {window[1]:g}; outside values in the end bins)")
    axis.set_ylabel("share of voxels")
    axis.set_yscale("log")
    axis.legend()
    return figure_uri(figure)


def _to_uint8(hounsfield: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return np.rint((np.clip(hounsfield, low, high) - low) / (high - low) * 255).astype(np.uint8)


def render_translation_html(run_url: str, manifest: dict[str, Any], metrics: dict[str, Any],
                            translated: Translated, references: np.ndarray, settings: dict[str, Any]) -> str:
    from factory.evaluate.report_html import STYLE, png_uri, table

    window = tuple(metrics["window"])
    parts = [f"<h1>MedSynth translation report: {html.escape(manifest['run_id'])}</h1>",
             f"<p class=note>{html.escape(run_url)} · {manifest['count']} translated slices in "
             f"{len(manifest['shards'])} shards · evaluated on {metrics['counts']['translated']} translated, "
             f"{metrics['counts']['real']} real CT and {metrics['counts']['paired']} paired slices · "
             f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p>"]
    cards = []
    for n in range(min(GRID_SAMPLES, len(translated.keys))):
        meta = translated.metas[n]
        images = [png_uri(np.rint(translated.sources[n] * 255).astype(np.uint8)),
                  png_uri(_to_uint8(translated.hounsfield[n], window))]
        if not np.isnan(references[n, 0, 0]):
            images.append(png_uri(_to_uint8(references[n], window)))
        age = (meta.get("labels") or {}).get("age")
        caption = (f"{meta['source_modality']} {meta['source_study_id']} slice {meta['slice_index'] + 1}/"
                   f"{meta['slice_count']}" + (f", age {age:g}" if age is not None else ""))
        cards.append(f"<div class=card id=sample-{n}>" + "".join(f"<img alt='' src='{uri}'>" for uri in images)
                     + f"<div class=labels>{html.escape(caption)}</div></div>")
    parts += ["<h2 id=samples>Samples</h2><p class=note>Each card: the source slice, its translation and, where "
              "one exists, the paired reference CT, all in the window.</p>", f"<div class=grid>{''.join(cards)}</div>"]

    hu = metrics["hounsfield"]
    columns = [k for k in ("translated", "real", "paired") if k in hu]
    parts += ["<h2 id=hounsfield>Hounsfield units</h2>", table(
        [(stat, *[hu[c][stat] for c in columns]) for stat in
         ("min", "p1", "p5", "p50", "p95", "p99", "max", "mean", "std", "share_below_window", "share_above_window")],
        ["statistic", *columns]),
        table([("translated vs real", metrics["wasserstein_hu"]["translated_vs_real"]),
                ("real vs real (two halves: the floor)", metrics["wasserstein_hu"]["real_vs_real"])],
               ["Wasserstein-1 distance within the window", "HU"]),
        f"<img alt='HU histogram' src='{_histogram_figure(metrics['histogram'], window)}'>",
        f"<p class=note>Window {window[0]:g} .. {window[1]:g} HU: {html.escape(settings['window_from'])}. "
        "Translated CT holds only this range; real CT outside it counts in the end bins.</p>"]
    if "paired" in metrics:
        p = metrics["paired"]
        parts += ["<h2 id=paired>Against the paired reference</h2>", table([
            ("SSIM", p["ssim"], p["ssim_sd"]), ("PSNR (dB)", p["psnr_db"], p["psnr_db_sd"]),
            ("MAE (HU, within the window)", p["mae_hu"], p["mae_hu_sd"])], ["metric", "mean", "sd over slices"]),
            f"<p class=note>{p['count']} slices; reference: {html.escape(str(settings['paired']))}. SSIM and PSNR "
            "on the window mapped onto [0, 1] (torchmetrics).</p>"]
    modality_rows = []
    for modality, found in metrics["by_source_modality"].items():
        paired = found.get("paired", {})
        modality_rows.append((modality, found["count"], found["hounsfield"]["p50"], paired.get("ssim"),
                              paired.get("psnr_db"), paired.get("mae_hu")))
    parts += ["<h2 id=modalities>By source modality</h2>",
              table(modality_rows, ["source", "slices", "median HU", "SSIM", "PSNR (dB)", "MAE (HU)"])]
    age = metrics["age"]
    parts.append("<h2 id=age>Age regressor</h2>")
    if "skipped" in age:
        parts.append(f"<p class=note>Not measured: {html.escape(age['skipped'])}.</p>")
    else:
        rows = [(name, found["count"], found["mae_years"], found["rmse_years"], found["bias_years"], found["pearson_r"])
                for name, found in (("real CT, held out", age["real_held_out"]), ("translations", age.get("translated")),
                                    ("paired reference, same slices", age.get("paired_reference")),
                                    ("translations of those slices", age.get("translated_on_paired")))
                if found]
        parts += [table(rows, ["slices", "n", "MAE (years)", "RMSE (years)", "bias (years)", "Pearson r"]),
                  f"<p class=note>The brain-age CNN trained for {age['epochs']} epochs on {age['train_slices']} real "
                  "CT slices. An error on the translations close to the paired reference's means the translation "
                  "keeps the age-related anatomy the regressor reads.</p>"]
    parts += ["<h2 id=settings>Settings</h2>", f"<pre>{html.escape(json.dumps(settings, indent=1, default=str))}</pre>"]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>MedSynth translation report "
            f"{html.escape(manifest['run_id'])}</title><style>{STYLE}.card img{{width:32%}}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


# --- the job ----------------------------------------------------------------------------------------

def evaluate_translation(run_url: str, out_html: str, *, real=None, paired=None, count: int = 1000,
                         real_count: int = 1000, window: Sequence[float] | None = None, age_epochs: int = 20,
                         seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Measure a translation run and write the HTML report (and its metrics as JSON beside it).

    `real`: a volumes-layout dataset (factory.data.adapters.volumes) whose CT studies are the real CT
    (default: brain phantom CT of other patients). `paired`: a volumes-layout dataset of CT studies
    named by the source study ids (default: the phantom's paired CT where the sources are phantoms)."""
    from factory import storage
    from factory.evaluate.report_html import jsonable
    from factory.run_manifest import read_manifest

    manifest = read_manifest(run_url)
    if manifest["sample_kind"] != "translation":
        raise BadInputError(run_url, f"a {manifest['sample_kind']} run, not a translation run")
    translated = read_translations(run_url, min(count, manifest["count"]), progress)
    size = tuple(translated.hounsfield.shape[1:])
    if window is not None:
        window_range, window_from = (float(window[0]), float(window[1])), "given"
    else:
        found = represented_window(manifest)
        if found is not None:
            window_range, window_from = found, "the range the bundle's model represents"
        else:
            window_range = (float(translated.hounsfield.min()), float(translated.hounsfield.max()))
            window_from = "the range of the translations (the bundle could not be read)"
    if not window_range[0] < window_range[1]:
        raise BadInputError("window", f"{list(window_range)} is not a range LOW < HIGH")
    real_ct = (dataset_real_ct(real, real_count, size, progress) if real is not None
               else phantom_real_ct(real_count, size, progress=progress))
    source_root = ((manifest.get("config") or {}).get("producer") or {}).get("source")
    references, paired_from = paired_references(translated, size, source_root, paired, progress)
    metrics = measure_translation(translated, real_ct, references, window_range, age_epochs, seed, progress)
    settings = {"run": run_url, "kind": "translation", "count": len(translated.keys), "real": real_ct.description,
                "paired": paired_from, "window": list(window_range), "window_from": window_from,
                "age_epochs": age_epochs, "seed": seed}
    page = render_translation_html(run_url, manifest, metrics, translated, references, settings)
    storage.atomic_put(out_html, page.encode())
    metrics_url = out_html.rsplit(".", 1)[0] + ".json" if out_html.endswith(".html") else out_html + ".json"
    storage.atomic_put(metrics_url, json.dumps(jsonable({"settings": settings, "metrics": metrics}), indent=1).encode())
    return {"html": out_html, "json": metrics_url, "metrics": metrics, "settings": settings}
