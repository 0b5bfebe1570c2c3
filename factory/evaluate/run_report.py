"""`medsynth evaluate RUN_URL`: everything known about one run's quality, in one self-contained HTML file.

What it measures, for the first `count` samples of the run (in index order, so the report is
reproducible) against real data:
- images: FID and KID in the judge's feature space, next to the same numbers for two disjoint halves
  of the real data (the floor a perfect generator reaches with this many samples); the judge's
  Inception-Score analogue for synthetic and real images; label fidelity, the judge's macro-AUC on
  the synthetic images for their conditioning labels, next to its held-out AUC on real images;
- reports (pairs only): BLEU-1..4, CIDEr-D and ROUGE-L against real reports that state the same
  findings (up to 5 per sample: synthetic pairs have no ground-truth report, so the references are
  the real reports of studies with the same positive labels), and labeler agreement of each report
  with its conditioning labels;
- label histograms, real vs synthetic;
- the memorization audit (factory.evaluate.memorization) against the generator's training images,
  with held-out real images setting the threshold;
- the augmentation study's plot and table, when one is given.

The HTML embeds its pictures as data URIs and holds no script, so it opens anywhere, offline.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from factory.errors import BadInputError
from factory.evaluate.report_html import STYLE, figure_uri, jsonable, png_uri, table

GRID_SAMPLES = 24
REFERENCES_PER_SAMPLE = 5


@dataclass
class RealData:
    """Real images (N, 1, S, S) float32 in [0, 1], CheXpert-valued labels (N, K), reports (or None)."""

    images: np.ndarray
    labels: np.ndarray
    reports: list[str | None]
    label_names: list[str]
    description: str


def real_data(dataset, size: int, limit: int | None = None, progress: bool = True, what: str = "real") -> RealData:
    """The first `limit` studies of a StudyDataset, images resized to `size` as the judge reads them."""
    from factory.evaluate.judge import to_judge_input

    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count < 2:
        raise BadInputError(what, f"needs at least 2 studies, has {len(dataset)}")
    images = np.empty((count, 1, size, size), np.float32)
    labels = np.empty((count, len(dataset.label_names)), np.float32)
    reports: list[str | None] = []
    for i in tqdm(range(count), desc=f"{what} studies", unit="study", disable=not progress):
        study = dataset[i]
        images[i] = to_judge_input(study.image[None], size, study.study_id)[0].numpy()
        labels[i] = np.asarray(study.labels, np.float32)
        reports.append(study.report)
    return RealData(images, labels, reports, list(dataset.label_names), f"{type(dataset).__name__}: {count} studies")


@dataclass
class SyntheticData:
    images: np.ndarray  # (N, 1, S, S) float32 in [0, 1], at the judge's size
    thumbnails: list[np.ndarray]  # the first GRID_SAMPLES images as stored (uint8)
    labels: np.ndarray  # (N, K) conditioning labels
    reports: list[str | None]
    keys: list[str]
    metas: list[dict[str, Any]]


def synthetic_data(run_url: str, count: int, size: int, label_names: Sequence[str], progress: bool = True) -> SyntheticData:
    """The first `count` samples of a run, in index order, through factory.stream."""
    import torch

    from factory.evaluate.judge import to_judge_input
    from factory.stream import open_run

    stream = open_run(run_url, label_names=label_names, rank=0, world_size=1)
    images, labels, reports, keys, metas, thumbnails = [], [], [], [], [], []
    bar = tqdm(total=count, desc="synthetic samples", unit="sample", disable=not progress)
    for sample in stream:
        images.append(to_judge_input(sample["image"][None], size, sample["__key__"])[0])
        labels.append(np.nan_to_num(np.asarray(sample["labels"], np.float32), nan=0.0))
        reports.append(sample["report"])
        keys.append(sample["__key__"])
        metas.append(sample["meta"])
        if len(thumbnails) < GRID_SAMPLES:
            thumbnails.append((sample["image"][0].clamp(0, 1).numpy() * 255).round().astype(np.uint8))
        bar.update()
        if len(images) == count:
            break
    bar.close()
    if len(images) < 2:
        raise BadInputError(run_url, f"holds {len(images)} samples; the report needs at least 2")
    return SyntheticData(torch.stack(images).numpy(), thumbnails, np.stack(labels), reports, keys, metas)


def _references(synthetic_labels: np.ndarray, real: RealData, seed: int) -> list[list[str]]:
    """Up to REFERENCES_PER_SAMPLE real reports stating the same findings as each synthetic sample
    (any real reports when no real study has that combination), seeded."""
    from factory.evaluate.image_metrics import present

    texts = [r for r in real.reports if r]
    if not texts:
        raise BadInputError("real data", "has no reports to compare generated reports with")
    with_report = [i for i, r in enumerate(real.reports) if r]
    real_keys = ["".join("1" if v else "0" for v in row) for row in present(real.labels[with_report])]
    by_combo: dict[str, list[str]] = {}
    for key, index in zip(real_keys, with_report):
        by_combo.setdefault(key, []).append(real.reports[index])
    rng = np.random.default_rng([seed, 0x5EF])
    references = []
    for row in present(synthetic_labels):
        pool = by_combo.get("".join("1" if v else "0" for v in row)) or texts
        picks = rng.choice(len(pool), size=min(REFERENCES_PER_SAMPLE, len(pool)), replace=False)
        references.append([pool[i] for i in picks])
    return references


def measure(synthetic: SyntheticData, real: RealData, judge, *, train_images: np.ndarray | None = None,
            held_out_images: np.ndarray | None = None, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Every metric of the report as a JSON-able dict (see the module docstring)."""
    from factory.evaluate import image_metrics, text_metrics
    from factory.evaluate.image_metrics import present

    names = list(real.label_names)
    if list(judge.label_names) != names:
        raise BadInputError("judge", f"labels {judge.label_names} differ from the real data's {names}")
    real_features, real_probabilities = judge.evaluate(real.images)
    fake_features, fake_probabilities = judge.evaluate(synthetic.images)
    # FID is biased by sample size, so synthetic and reference are compared at one size: half A of the
    # real data against as many synthetic samples, and against the other real half B.
    half = min(len(real_features) // 2, len(fake_features))
    rng = np.random.default_rng([seed, 0xF1D])
    order = rng.permutation(len(real_features))
    first, second = real_features[order[:half]], real_features[order[half:2 * half]]
    fakes = fake_features[np.sort(rng.permutation(len(fake_features))[:half])]
    subset = min(1000, half)
    images = {
        "fid": image_metrics.fid(first, fakes),
        "fid_real_vs_real": image_metrics.fid(first, second),
        "kid": image_metrics.kid(first, fakes, subset_size=subset, seed=seed)[0],
        "kid_real_vs_real": image_metrics.kid(first, second, subset_size=subset, seed=seed)[0],
        "samples_per_set": half,
        "inception_score": image_metrics.inception_score(fake_probabilities)[0],
        "inception_score_real": image_metrics.inception_score(real_probabilities)[0],
    }
    fidelity = image_metrics.label_fidelity(fake_probabilities, synthetic.labels, names)
    real_auc = image_metrics.multilabel_auc(real_probabilities, real.labels, names)
    result: dict[str, Any] = {
        "counts": {"synthetic": len(synthetic.images), "real": len(real.images)},
        "images": images,
        "label_fidelity": {"synthetic_macro_auc": fidelity["macro_auc"], "real_macro_auc": real_auc["macro_auc"],
                           "synthetic_auc": fidelity["auc"], "real_auc": real_auc["auc"]},
        "label_shares": {"synthetic": dict(zip(names, present(synthetic.labels).mean(axis=0).tolist())),
                         "real": dict(zip(names, present(real.labels).mean(axis=0).tolist()))},
        "judge": {"bundle_id": judge.bundle_id, "held_out_macro_auc": judge.metrics.get("macro_auc")},
    }
    reports = [r for r in synthetic.reports if r is not None]
    if reports and len(reports) == len(synthetic.reports):
        candidates = [str(r) for r in synthetic.reports]
        result["reports"] = {
            **text_metrics.report_metrics(candidates, _references(synthetic.labels, real, seed)),
            "labeler": text_metrics.labeler_agreement(candidates, synthetic.labels, names),
            # CE: what the labeler reads in each report against the labels its pair was made for, beside
            # the judge reading the same pairs' images and a report that always says normal.
            "clinical_efficacy": text_metrics.clinical_efficacy(text_metrics.stated_findings(candidates, names),
                                                                synthetic.labels, names),
            "clinical_efficacy_judge_on_images": text_metrics.clinical_efficacy(fake_probabilities >= 0.5,
                                                                                synthetic.labels, names),
            "clinical_efficacy_always_normal": text_metrics.clinical_efficacy(
                np.zeros((len(candidates), len(names)), bool), synthetic.labels, names),
        }
    if train_images is not None and held_out_images is not None:
        import torch

        from factory.evaluate.memorization import audit_memorization

        def features(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(judge.features(batch.cpu()))

        audit = audit_memorization(train_images, synthetic.images, held_out_images, features=features,
                                   synthetic_keys=synthetic.keys)
        result["memorization"] = audit.to_dict()
        for space in result["memorization"]["spaces"].values():  # per-sample lists stay out of the report
            for bulky in ("synthetic_distances", "real_distances", "synthetic_neighbours"):
                space.pop(bulky)
    return result


# --- HTML ----------------------------------------------------------------------------------------

def _label_histogram(shares: dict[str, dict[str, float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(shares["real"])
    x = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(8, 3.2))
    axis.bar(x - 0.2, [shares["real"][n] for n in names], 0.4, label="real")
    axis.bar(x + 0.2, [shares["synthetic"][n] for n in names], 0.4, label="synthetic")
    axis.set_xticks(x, names, rotation=30, ha="right")
    axis.set_ylabel("share of samples with the finding")
    axis.legend()
    return figure_uri(figure)


def _memorization_histogram(space: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(space["histogram"]["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    figure, axis = plt.subplots(figsize=(6, 3))
    for key, label in (("real", "held-out real → nearest training"), ("synthetic", "synthetic → nearest training")):
        counts = np.asarray(space["histogram"][key], dtype=float)
        axis.bar(centres, counts / max(counts.sum(), 1), width, alpha=0.55, label=label)
    axis.axvline(space["threshold"], color="black", linestyle="--", label=f"p{space['percentile']:g} of real")
    axis.set_xlabel(f"nearest-training distance ({space['space']}, RMS per dimension)")
    axis.set_ylabel("share")
    axis.legend(fontsize=8)
    return figure_uri(figure)


def render_html(run_url: str, manifest: dict[str, Any], metrics: dict[str, Any], synthetic: SyntheticData,
                settings: dict[str, Any], augmentation: dict[str, Any] | None = None) -> str:
    """The report page: sample grid, metric tables, label histograms, memorization, augmentation."""
    parts = [f"<h1>MedSynth run report: {html.escape(manifest['run_id'])}</h1>",
             f"<p class=note>{html.escape(run_url)} · {manifest['count']} samples in {len(manifest['shards'])} shards"
             f" · evaluated on {metrics['counts']['synthetic']} synthetic and {metrics['counts']['real']} real images"
             f" · judge {html.escape(str(metrics['judge']['bundle_id']))}"
             f" · {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p>"]

    cards = []
    for i, thumbnail in enumerate(synthetic.thumbnails):
        positives = [n for n, v in (synthetic.metas[i].get("labels") or {}).items() if v == 1] or ["(none)"]
        report = synthetic.reports[i] or ""
        cards.append(f"<div class=card id=sample-{i}><img alt='{html.escape(synthetic.keys[i])}' "
                     f"src='{png_uri(thumbnail)}'><div class=labels>{html.escape(', '.join(positives))}</div>"
                     f"<div class=report>{html.escape(report)}</div></div>")
    parts += ["<h2 id=samples>Samples</h2>", f"<div class=grid>{''.join(cards)}</div>"]

    images = metrics["images"]
    fidelity = metrics["label_fidelity"]
    parts += ["<h2 id=image-metrics>Image metrics (judge feature space)</h2>", table([
        ("FID", images["fid"], images["fid_real_vs_real"]),
        ("KID", images["kid"], images["kid_real_vs_real"]),
        ("Inception-Score analogue", images["inception_score"], images["inception_score_real"]),
        ("judge macro-AUC for the labels", fidelity["synthetic_macro_auc"], fidelity["real_macro_auc"]),
    ], ["metric", "synthetic vs real", "real vs real (reference)"]),
        f"<p class=note>FID and KID compare {images['samples_per_set']} images per set: half of the real data "
        "against as many synthetic images, and against the other real half (the value a perfect generator "
        "would reach at this size). The AUC reference is the judge on real images with their own labels.</p>",
        table([(n, fidelity["synthetic_auc"][n], fidelity["real_auc"][n]) for n in fidelity["synthetic_auc"]],
               ["finding", "judge AUC, synthetic", "judge AUC, real"])]

    if "reports" in metrics:
        reports = metrics["reports"]
        labeler = reports["labeler"]
        parts += ["<h2 id=report-metrics>Report metrics</h2>", table(
            [(k, reports[k]) for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider", "rouge_l") if k in reports]
            + [("labeler agreement (exact findings)", labeler["agreement"]),
               ("labeler per-finding accuracy", labeler["accuracy"]),
               ("labeler precision / recall / F1", f"{labeler['precision']:.3f} / {labeler['recall']:.3f} / "
                                                   f"{labeler['f1']:.3f}")]
            + [(f"clinical efficacy, {who}: micro P / R / F1; macro P / R / F1",
                " / ".join(f"{reports[key][avg][m]:.3f}" for avg in ("micro", "macro") for m in ("precision", "recall", "f1")))
               for who, key in (("reports", "clinical_efficacy"), ("judge reading the images", "clinical_efficacy_judge_on_images"),
                                ("always-normal report", "clinical_efficacy_always_normal")) if key in reports],
            ["metric", "value"]),
            "<p class=note>References: up to 5 real reports stating the same findings as each sample. "
            "Labeler agreement: the share of reports whose findings, as the CheXpert-style labeler reads them, "
            "are exactly the sample's conditioning labels. Clinical efficacy: the labeler's precision, recall and "
            "F1 over the eight findings (No Finding left out) against the conditioning labels, pooled (micro) and "
            "per finding averaged (macro).</p>"]

    parts += ["<h2 id=labels>Label distribution</h2>",
              f"<img alt='label histogram' src='{_label_histogram(metrics['label_shares'])}'>"]

    if "memorization" in metrics:
        memo = metrics["memorization"]
        parts.append("<h2 id=memorization>Memorization audit</h2>")
        parts.append(table([(space["space"], space["threshold"], len(space["flagged"]), space["share"])
                             for space in memo["spaces"].values()],
                            ["space", "p1 real-to-real distance", "synthetic closer", "share"]))
        parts.append(f"<p class=note>{memo['counts']['synthetic']} synthetic images against "
                     f"{memo['counts']['train']} training images; threshold from {memo['counts']['held_out']} "
                     "held-out real images. A generator that learnt the distribution puts about 1 % below it.</p>")
        for space in memo["spaces"].values():
            parts.append(f"<img alt='memorization histogram {space['space']}' src='{_memorization_histogram(space)}'>")
        flagged = [item for space in memo["spaces"].values() for item in space["flagged"][:20]]
        if flagged:
            parts.append(table([(item["key"], item["distance"], item["nearest_train_index"]) for item in flagged],
                                ["flagged sample", "distance", "nearest training image"]))

    if augmentation:
        parts.append("<h2 id=augmentation>Augmentation study</h2>")
        if augmentation.get("plot_png"):
            parts.append(f"<img alt='augmentation plot' src='data:image/png;base64,{augmentation['plot_png']}'>")
        if augmentation.get("table_html"):
            parts.append(augmentation["table_html"])

    parts += ["<h2 id=settings>Settings</h2>",
              f"<pre>{html.escape(json.dumps(settings, indent=1, default=str))}</pre>"]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>MedSynth report "
            f"{html.escape(manifest['run_id'])}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


# --- the job ---------------------------------------------------------------------------------------

def load_augmentation(url: str) -> dict[str, Any]:
    """An augmentation study as the report shows it: `medsynth evaluate augment` writes augment.json,
    augment.md (the table) and augment.png (the plot) into one folder; `url` names the JSON."""
    from factory import storage

    json.loads(storage.read_bytes(url))  # refuse anything that is not the study's JSON
    stem = url.rsplit(".", 1)[0]
    section: dict[str, Any] = {}
    if storage.exists(stem + ".png"):
        section["plot_png"] = base64.b64encode(storage.read_bytes(stem + ".png")).decode()
    if storage.exists(stem + ".md"):
        section["table_html"] = f"<pre>{html.escape(storage.read_bytes(stem + '.md').decode())}</pre>"
    return section


def generator_training_data(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The data description of the bundle a run was produced from (TrainDataConfig as JSON), or None
    when the run did not come from a bundle or its bundle is not readable."""
    from pydantic import ValidationError

    from factory import storage
    from factory.models.bundle import METADATA_NAME
    from factory.produce.producer_specs import BundlePairs, parse_producer

    try:
        producer = parse_producer((manifest.get("config") or {}).get("producer") or {})
    except ValidationError:
        return None
    if not isinstance(producer, BundlePairs):
        return None
    try:
        metadata = json.loads(storage.read_bytes(storage.join(producer.bundle, METADATA_NAME)))
        return json.loads(metadata["training_data"]["description"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def evaluate_run(run_url: str, out_html: str, *, judge_url: str, real=None, train=None, count: int = 1000,
                 real_count: int = 1000, seed: int = 0, augmentation: dict[str, Any] | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Measure a run against real data and write the HTML report (and its metrics as JSON beside it).

    `real`: a StudyDataset of real studies the generator did not train on (default: chest X-ray
    phantoms of other patients than the generator's training phantoms). `train`: the generator's
    training studies, for the memorization audit (default: found from the bundle's training data when
    it was the phantom; otherwise the audit is left out unless given)."""
    from factory import storage
    from factory.data.phantoms.dataset import PhantomCxrDataset
    from factory.evaluate.judge import Judge
    from factory.run_manifest import read_manifest

    manifest = read_manifest(run_url)
    judge = Judge.load(judge_url)
    size = judge.image_size
    trained_on = generator_training_data(manifest)
    phantom_training = trained_on if trained_on and trained_on.get("source") == "phantom-cxr" else None
    if real is None:
        # Other patients than any the generator saw: the phantom seed after its training seed.
        real_seed = (phantom_training or {}).get("seed", 0) + 1
        real = PhantomCxrDataset(real_count, size=max(size, 64), seed=real_seed)
    if train is None and phantom_training:
        train = PhantomCxrDataset(phantom_training["count"], size=phantom_training.get("size", size),
                                  seed=phantom_training.get("seed", 0))
    real_set = real_data(real, size, real_count, progress)
    synthetic = synthetic_data(run_url, min(count, manifest["count"]), size, real_set.label_names, progress)
    train_images = real_data(train, size, None, progress, what="training").images if train is not None else None
    metrics = measure(synthetic, real_set, judge, train_images=train_images,
                      held_out_images=real_set.images if train_images is not None else None, seed=seed,
                      progress=progress)
    settings = {"run": run_url, "judge": judge_url, "real": real_set.description, "count": len(synthetic.images),
                "training_data": trained_on, "memorization_reference": (
                    f"{len(train_images)} training images" if train_images is not None else None), "seed": seed}
    page = render_html(run_url, manifest, metrics, synthetic, settings, augmentation)
    storage.atomic_put(out_html, page.encode())
    metrics_url = out_html.rsplit(".", 1)[0] + ".json" if out_html.endswith(".html") else out_html + ".json"
    storage.atomic_put(metrics_url, json.dumps(jsonable({"settings": settings, "metrics": metrics}), indent=1).encode())
    return {"html": out_html, "json": metrics_url, "metrics": metrics, "settings": settings}


def evaluate_config(config) -> dict[str, Any]:
    """`evaluate_run` (pair and image runs) or `evaluate_translation` (translation runs) from an
    EvaluateConfig (the CLI and jobs/evaluate.py), by the run's sample kind."""
    from factory.data.adapters import open_dataset
    from factory.run_manifest import read_manifest

    manifest = read_manifest(config.run)
    kind = manifest["sample_kind"]
    translation = kind == "translation"
    if translation:
        given = [name for name in ("judge", "train", "augment") if getattr(config, name) is not None]
        if given:
            raise BadInputError(config.run, f"a translation run's report takes no {', '.join(given)} "
                                            "(those measure pair and image runs)")
        if config.real_layout not in (None, "volumes"):
            raise BadInputError(config.run, f"a translation run compares with real CT in the volumes layout, "
                                            f"not {config.real_layout}")
    else:
        if config.judge is None:
            raise BadInputError(config.run, f"a {kind} run's report needs the judge bundle (judge; "
                                            "`medsynth evaluate judge` writes one)")
        unused = [name for name in ("paired", "window") if getattr(config, name) is not None]
        if unused or config.real_layout == "volumes":
            raise BadInputError(config.run, f"{', '.join(unused) or 'real_layout volumes'}: for translation runs, "
                                            f"not a {kind} run")
    if translation:
        from factory.data.adapters.volumes import open_volumes
        from factory.evaluate.translation import evaluate_translation

        size = manifest["config"]["producer"]["image_size"]  # real and paired CT at the translations' size
        datasets = {role: open_volumes(getattr(config, role), size=size) for role in ("real", "paired")
                    if getattr(config, role)}
        return evaluate_translation(config.run, config.out, real=datasets.get("real"), paired=datasets.get("paired"),
                                    count=config.count, real_count=config.real_count, window=config.window,
                                    age_epochs=config.age_epochs, seed=config.seed)
    datasets = {role: open_dataset(getattr(config, role), getattr(config, f"{role}_layout"), size=128)
                for role in ("real", "train") if getattr(config, role)}
    return evaluate_run(config.run, config.out, judge_url=config.judge, real=datasets.get("real"),
                        train=datasets.get("train"), count=config.count, real_count=config.real_count,
                        seed=config.seed, augmentation=load_augmentation(config.augment) if config.augment else None)
