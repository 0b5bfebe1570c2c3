"""The dataset card: a short Markdown file beside a finished run's manifest, for the people who use it.

    OUT/dataset_card.md   YAML front matter (run id, kind, count, whether synthetic and, for runs of a
                          dataset's real images, which members are generated; intended use) and the sections
                          What made it, What it holds, Known limits, Intended use

It is made from the manifest alone plus the generator bundle's metadata (its model, whether it was
trained and on what), so it says nothing the run's own records do not. It is written just before the
manifest (factory.produce.manifest.finish_run): the manifest stays the last object of a run, and
every run with a manifest has its card. Verification reads the manifest's shard list, never a
listing of the folder, so the card is an extra file that nothing checks or streams.
"""

from __future__ import annotations

import json
from typing import Any

from factory import storage
from factory.errors import FactoryError
from factory.storage import StorageOptions

CARD_NAME = "dataset_card.md"
# Kinds whose `png` is a real image of the source dataset: what of each sample a model generated (the
# rest, image and labels, is the dataset's own), so the card never calls such a run synthetic.
GENERATED = {  # kind -> (generated members, their description)
    "caption": (["txt"], "the report (`txt`)"),
    "explanation": (["txt", "cf.png", "json.explanation"],
                    "the justification (`txt`), the counterfactual X-ray (`cf.png`) and the diagnosis with its "
                    "probabilities (the json's `explanation`)"),
}
INTENDED_USE = ("synthetic data for machine-learning research (augmentation, pipeline and capacity tests); "
                "not for diagnosis, clinical decisions or as evidence about real patients")
REAL_IMAGE_TERMS = ("The images are copies of the source dataset's: its licence and data-use terms (patient "
                    "privacy included) apply to this run as they do to the dataset.")
REAL_IMAGE_USE = ("model-written annotations of a dataset's real images for machine-learning research; "
                  "not for diagnosis, clinical decisions or as evidence about real patients")

KIND_TEXT = {
    "pair": "chest X-ray images with free-text reports",
    "image": "labelled chest X-ray images without reports",
    "translation": "source MRI/PET slices translated into CT",
    "caption": "real chest X-rays of a dataset, each with the report a captioning model wrote for it",
    "explanation": "real chest X-rays of a dataset, each with a model's diagnosis, its justification and the "
                   "counterfactual X-ray of the nearest alternative diagnosis",
}
MEMBER_TEXT = {
    "png": "the image, 8- or 16-bit grayscale PNG",
    "txt": "the report, UTF-8",
    "cls": "index of the primary label",
    "json": "metadata (schemas/sample.schema.json)",
    "ct.png": "the translated CT, 16-bit PNG of Hounsfield units + 1024",
    "src.png": "the source slice the generator saw, 16-bit PNG",
    "cf.png": "the counterfactual X-ray of the nearest alternative diagnosis, 8-bit PNG",
}


def card_url(out: str) -> str:
    return storage.join(out, CARD_NAME)


def _bundle_metadata(url: str) -> dict[str, Any] | None:
    """bundle.json of the run's generator, or None when it can no longer be read (moved, deleted)."""
    from factory.models.bundle import read_metadata

    try:
        return read_metadata(url)
    except (OSError, FactoryError, ValueError):
        return None


def _model_summary(recipe: str) -> str:
    from factory.models import registry

    try:
        return registry.spec(recipe).summary
    except (KeyError, ValueError):
        return "a model this version does not know"


def _made_by(producer: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(lines of "What made it", limits that follow from the generator)."""
    if producer.get("type") == "phantom-cxr":
        return ([f"- generator: the built-in chest X-ray phantom (procedural drawings, {producer.get('size')} px), "
                 "no trained model"],
                ["Procedural phantoms, not patient images: anatomy, findings and report wording come from "
                 "hand-written rules, so they show far less variety than real studies."])
    bundle_url = producer.get("bundle", "")
    metadata = _bundle_metadata(bundle_url) if bundle_url else None
    if metadata is None:
        return ([f"- generator bundle: `{bundle_url}` (sha256 {producer.get('bundle_sha256') or '?'}), "
                 "not readable now, so its model and training data are not described here"],
                ["The generator's training data could not be read when this card was written."])
    training = metadata.get("training_data", {})
    lines = [f"- generator bundle: `{bundle_url}`, id `{metadata['bundle_id']}`, model `{metadata['recipe']}` "
             f"({_model_summary(metadata['recipe'])})",
             f"- trained: {'yes' if metadata.get('trained', True) else 'no (random weights)'}; "
             f"training data: {training.get('description') or training.get('fingerprint')}"
             + (f" ({training['count']} studies)" if training.get("count") else "")]
    limits = []
    if metadata.get("trained") is False:
        limits.append("The generator is untrained: what it generates is noise with the right shapes, useful for "
                      "testing pipelines and capacity only.")
    description = str(training.get("description") or "")
    if "phantom" in description:
        limits.append("The generator learnt from phantoms, not patients: at best it reproduces the phantom's "
                      "simplified anatomy.")
    return lines, limits


def _kind_limits(manifest: dict[str, Any], producer: dict[str, Any]) -> list[str]:
    kind = manifest["sample_kind"]
    if kind == "pair":
        return ["Labels are the ones each sample was conditioned on (or drawn with, for phantoms), not read from "
                "the image or report afterwards; a report can miss or add findings (`medsynth evaluate` measures "
                "how often with the report labeler)."]
    if kind == "image":
        if producer.get("threshold") is not None:
            return [f"Labels are the generator's own classifier's pseudo-labels, kept where its confidence is at least "
                    f"{producer['threshold']:g}; they are predictions, not ground truth."]
        return ["Labels are the ones each image was conditioned on, not read from the image afterwards."]
    if kind == "translation":
        return ["Translated CT holds only the Hounsfield range the model represents (e.g. a brain window): air and "
                "bone saturate; `medsynth evaluate` reports the range and histogram against real CT.",
                "The age label is the source study's; the translation is not guaranteed to keep age-related "
                "anatomy (`medsynth evaluate` reports an age regressor's error on the translations).",
                "Slices are translated one by one: a volume's slices need not be consistent along its axis."]
    if kind == "caption":
        return ["Reports are one model's readings of the images, not ground truth; `labels` and `cls` are the "
                "dataset's own labels of each study.", REAL_IMAGE_TERMS]
    if kind == "explanation":
        return ["Diagnoses, justifications and counterfactuals are one model's readings of the images, not ground "
                "truth; `labels` and `cls` are the dataset's own labels of each study.",
                "A counterfactual whose `alternative_reached` is false did not reach the alternative diagnosis in "
                "the model's own reading.", REAL_IMAGE_TERMS]
    return []


def _what_is_real(kind: str) -> list[str]:
    if kind in GENERATED:
        return [f"Data: {KIND_TEXT.get(kind, kind)}, made by MedSynth Factory. The images are the source dataset's "
                f"own, and so are their labels; only {GENERATED[kind][1]} of each sample is generated."]
    return [f"Synthetic data: {KIND_TEXT.get(kind, kind)}, made by MedSynth Factory. Every sample is generated; "
            "none is a patient's image or report."]


def render_card(manifest: dict[str, Any], seed: int) -> str:
    """The card's Markdown for a finished run's manifest and its run seed."""
    from factory.produce.samples import SAMPLE_MEMBERS

    kind = manifest["sample_kind"]
    config = manifest.get("config") or {}
    producer = config.get("producer") or {}
    made, limits = _made_by(producer)
    real_images = kind in GENERATED
    intended_use = REAL_IMAGE_USE if real_images else INTENDED_USE
    front = {"run_id": manifest["run_id"], "sample_kind": kind, "count": manifest["count"],
             "created_at": manifest["created_at"], "synthetic": not real_images,
             **({"generated": GENERATED[kind][0]} if real_images else {}), "intended_use": intended_use}
    lines = ["---", *(f"{k}: {json.dumps(v)}" for k, v in front.items()), "---", "",
             f"# Dataset card: {manifest['run_id']}", "",
             *_what_is_real(kind), "",
             "## What made it", "",
             f"- command: `{manifest.get('command') or '(library call)'}`", *made,
             f"- run seed {seed}; "
             f"shard size {manifest['shard_size']}; configuration sha256 `{manifest['config_sha256']}`"]
    if config.get("gates"):
        lines.append("- quality gates: " + ", ".join(json.dumps(g, sort_keys=True) for g in config["gates"]))
    if kind == "translation":
        lines.append(f"- source dataset: `{producer.get('source')}`, modality {producer.get('modality') or 'all the bundle translates'}, "
                     f"{producer.get('studies')} studies ({producer.get('volumes')} volumes), slices at "
                     f"{producer.get('image_size')} px")
    lines += ["", "## What it holds", "",
              f"- {manifest['count']} samples of {manifest['requested']} requested, in {len(manifest['shards'])} "
              f"WebDataset shards ({manifest['bytes']:,} bytes); the manifest lists them"]
    if manifest.get("dropped"):
        lines.append("- dropped by quality gates: " + ", ".join(f"{k} {v}" for k, v in manifest["dropped"].items()))
    members = sorted(SAMPLE_MEMBERS.get(kind, ()))
    lines.append("- members of each sample: " + "; ".join(f"`{m}` {MEMBER_TEXT.get(m, '')}".rstrip() for m in members))
    volumes = (manifest.get("extra") or {}).get("volumes")
    if volumes:
        lines.append(f"- {volumes['count']} whole volumes ({volumes['slices']} slices) as int16 Hounsfield units in "
                     f"`{volumes['group']}` (`medsynth export-nifti` writes them as NIfTI)")
    histogram = manifest.get("label_histogram") or {}
    if histogram:
        lines += ["", "| label | samples | share |", "| --- | ---: | ---: |"]
        for name, count in sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"| {name} | {count} | {count / max(manifest['count'], 1):.1%} |")
    lines += ["", "## Known limits", "", *(f"- {text}" for text in limits + _kind_limits(manifest, producer)),
              "- No measurement of quality is part of this card: `medsynth evaluate` writes one.",
              "", "## Intended use", "", f"{intended_use[0].upper()}{intended_use[1:]}.", ""]
    return "\n".join(lines)


def write_card(out: str, manifest: dict[str, Any], seed: int, storage_options: StorageOptions = None) -> str:
    """Write the card of a finished run (before its manifest); a card of another run there is an error."""
    url = card_url(out)
    if storage.exists(url, storage_options):
        text = storage.read_bytes(url, storage_options).decode("utf-8", "replace")
        if f"run_id: {json.dumps(manifest['run_id'])}" not in text.split("\n---", 1)[0]:
            raise FactoryError(f"{url}: exists and is not this run's dataset card; "
                               "choose another output location or move the file")
    storage.atomic_put(url, render_card(manifest, seed).encode(), storage_options)
    return url
