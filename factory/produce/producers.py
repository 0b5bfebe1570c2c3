"""Producers: what an actor builds once and then asks for batches of samples by index.

A producer is described by a typed spec (factory.produce.producer_specs), which the driver hands to
actors and the manifest echoes; the spec's `build` makes the producer inside the actor (loading a
bundle there, once). Sample n must depend only on (run seed, n) and the spec: that is what makes
any shard regenerable bit for bit, by any actor, in any order. Bundle producers call the model
through the product its spec declares (factory.models.spec), never by the model's name.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np

from factory.data.hounsfield import CT_PNG_OFFSET
from factory.data.labels import CXR_LABELS
from factory.errors import BadInputError, FactoryError
from factory.models.spec import Captioning, ImageSampling, PairSampling, ReportImaging, Translation
from factory.produce.samples import Dropped, Sample

SIXTEEN_BIT = 65535


class Producer(Protocol):
    sample_kind: str

    def make_batch(self, indices: range) -> Sequence[Sample | Dropped]:
        """Samples for consecutive indices, in order."""


def primary_label(labels: np.ndarray, names: Sequence[str] = CXR_LABELS) -> int:
    """The first positive finding in label order, or No Finding."""
    positives = [i for i, value in enumerate(labels) if value == 1 and names[i] != "No Finding"]
    return positives[0] if positives else list(names).index("No Finding")


def phantom_pairs(seed: int, indices: Iterable[int], size: int = 128) -> Iterator[Sample]:
    """Phantom studies as samples: labelled stand-in data in the same shard format as generated
    data, and production without a trained bundle (demo, tests, capacity work)."""
    from factory.data.phantoms.cxr import generate_study

    for index in indices:
        study = generate_study(seed, index, size=size)
        label = primary_label(study.labels)
        yield Sample(
            index=index,
            images={"png": study.image},
            report=study.report,
            label=label,
            metadata={
                "kind": "pair",
                "source": {"kind": "phantom", "recipe": "phantom-cxr"},
                "labels": {name: float(v) for name, v in zip(CXR_LABELS, study.labels)},
                "primary_label": CXR_LABELS[label],
            },
        )


class PhantomPairProducer:
    """Phantom chest X-ray studies with their reports, as image/report pairs."""

    sample_kind = "pair"

    def __init__(self, seed: int, size: int = 128):
        self.seed = seed
        self.size = size

    def make_batch(self, indices: range) -> list[Sample]:
        return list(phantom_pairs(self.seed, indices, self.size))


class LabelPolicy:
    """Which labels sample n is conditioned on, as a function of (seed, n) alone.

    balanced: a primary finding drawn uniformly over the label names (No Finding included);
    prior: a label combination drawn from the training data's combination frequencies;
    counts: explicit counts per combination ("Cardiomegaly+Pleural Effusion": 250, ...), summing to the
    run's count, laid out in a seeded permutation so that every shard gets a fair mix.
    """

    def __init__(self, label_names: Sequence[str], policy: str | dict[str, int], seed: int, count: int,
                 prior: Sequence[dict[str, Any]] | None = None):
        self.names = list(label_names)
        self.seed = seed
        self.policy = policy if isinstance(policy, str) else "counts"
        if self.policy == "prior":
            if not prior:
                raise FactoryError("this bundle records no training label prior; use balanced or explicit counts")
            self.combos = [self._vector(entry["labels"]) for entry in prior]
            shares = np.array([entry["share"] for entry in prior], dtype=np.float64)
            self.cumulative = np.cumsum(shares / shares.sum())
        elif self.policy == "counts":
            if sum(policy.values()) != count:
                raise FactoryError(f"label counts add up to {sum(policy.values())}, not the run's count {count}")
            order = sorted(policy)
            self.combos = [self._vector(combo.split("+")) for combo in order]
            layout = np.repeat(np.arange(len(order)), [policy[c] for c in order])
            self.layout = np.random.default_rng([seed, 0x1ABE1]).permutation(layout)
        elif self.policy != "balanced":
            raise FactoryError(f"unknown label policy {policy!r}: balanced, prior or counts per combination")

    def _vector(self, names: Sequence[str]) -> np.ndarray:
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise FactoryError(f"unknown labels {unknown}; this bundle knows {self.names}")
        return np.array([1.0 if n in names else 0.0 for n in self.names], dtype=np.float32)

    def labels(self, index: int, rng: np.random.Generator) -> np.ndarray:
        if self.policy == "balanced":
            vector = np.zeros(len(self.names), dtype=np.float32)
            vector[rng.integers(len(self.names))] = 1.0
            return vector
        if self.policy == "prior":
            return self.combos[int(np.searchsorted(self.cumulative, rng.random(), side="right"))]
        return self.combos[self.layout[index]]


def load_planned_bundle(bundle_url: str, bundle_sha256: str | None, device: str):
    """The bundle a run was planned with. The run's identity holds its sha256: a bundle replaced in place
    since planning (read by a replacement actor, or by a resumed run's actors) would make shards of one run
    disagree, so it stops the run instead, naming the bundle."""
    from factory import storage
    from factory.models.bundle import METADATA_NAME, load_bundle

    bundle = load_bundle(bundle_url, device=device)
    if bundle_sha256 is not None and bundle.sha256 != bundle_sha256:
        raise BadInputError(storage.join(bundle_url, METADATA_NAME),
                            "changed since this run was planned (its sha256 differs); write the run to a new "
                            "location, or put the bundle it was planned with back")
    return bundle


def bundle_source(bundle) -> dict[str, str]:
    """A sample's `source` when a bundle made it (schemas/sample.schema.json)."""
    return {"kind": "bundle", "recipe": bundle.recipe, "bundle_id": bundle.bundle_id, "bundle_sha256": bundle.sha256}


class BundlePairProducer:
    """Image/report pairs from a label-conditioned generator bundle (EMIXER and kin).

    Sample n: labels from the label policy and noise z from a generator seeded by (seed, n); greedy
    report decoding. The bundle loads once, onto the GPU when the actor has one.
    """

    sample_kind = "pair"

    def __init__(self, seed: int, bundle_url: str, labels: str | dict[str, int], count: int,
                 bundle_sha256: str | None = None):
        import torch

        from factory.models import registry

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.bundle = load_planned_bundle(bundle_url, bundle_sha256, self.device)
        self.model = registry.spec(self.bundle.recipe).product(PairSampling)
        if self.model is None:
            raise FactoryError(f"{bundle_url}: a {self.bundle.recipe} bundle does not make image/report pairs")
        self.seed = seed
        self.z_dim = self.model.z_dim(self.bundle.model_config)
        self.policy = LabelPolicy(self.bundle.label_names, labels, seed, count,
                                  self.bundle.metadata["training_data"].get("label_prior"))
        self.source = bundle_source(self.bundle)

    def make_batch(self, indices: range) -> list[Sample]:
        labels, noise = [], []
        for index in indices:
            rng = np.random.default_rng([self.seed, index])
            labels.append(self.policy.labels(index, rng))
            noise.append(rng.standard_normal(self.z_dim, dtype=np.float32))
        labels_t = self.torch.from_numpy(np.stack(labels))
        images, ids = self.model.generate(self.bundle.nets, labels_t, self.torch.from_numpy(np.stack(noise)))
        reports = self.model.decode_reports(ids, self.bundle.vocabulary)
        samples = []
        for index, vector, image, report in zip(indices, labels, images, reports):
            label = primary_label(vector, self.bundle.label_names)
            samples.append(Sample(
                index=index, images={"png": image}, report=report, label=label,
                metadata={"kind": "pair", "source": self.source,
                          "labels": {name: float(v) for name, v in zip(self.bundle.label_names, vector)},
                          "primary_label": self.bundle.label_names[label]},
            ))
        return samples


class BundleImageProducer:
    """Labelled images without reports from a bundle whose model makes them (factory.models.spec.ImageSampling).

    A label-conditioned model: sample n's labels come from the label policy and its noise z from a
    generator seeded by (seed, n), exactly as for pairs. An unconditional model: z alone is drawn from
    (seed, n), and the model's classifier labels the images afterwards; a sample whose pseudo-label
    confidence is below `threshold` is dropped (reason PSEUDO_LABEL_DROP), so the shard counts it.
    """

    sample_kind = "image"
    PSEUDO_LABEL_DROP = "pseudo-label-confidence"

    def __init__(self, seed: int, bundle_url: str, labels: str | dict[str, int] | None, count: int,
                 threshold: float | None, bundle_sha256: str | None = None):
        import torch

        from factory.models import registry

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.bundle = load_planned_bundle(bundle_url, bundle_sha256, self.device)
        self.model = registry.spec(self.bundle.recipe).product(ImageSampling)
        if self.model is None:
            raise FactoryError(f"{bundle_url}: a {self.bundle.recipe} bundle does not make labelled images")
        # The spec is checked when the run is planned; an actor handed a mismatched one stops the run.
        if self.model.conditional != (threshold is None) or (labels is None) == self.model.conditional:
            raise FactoryError(f"{bundle_url}: a {'conditional' if self.model.conditional else 'unconditional'} "
                               f"{self.bundle.recipe} bundle was handed labels={labels!r}, threshold={threshold!r}")
        self.seed = seed
        self.threshold = threshold
        self.z_dim = self.model.z_dim(self.bundle.model_config)
        self.policy = None if labels is None else LabelPolicy(
            self.bundle.label_names, labels, seed, count, self.bundle.metadata["training_data"].get("label_prior"))
        self.source = bundle_source(self.bundle)

    def make_batch(self, indices: range) -> list[Sample | Dropped]:
        labels, noise = [], []
        for index in indices:
            rng = np.random.default_rng([self.seed, index])
            if self.policy is not None:
                labels.append(self.policy.labels(index, rng))
            noise.append(rng.standard_normal(self.z_dim, dtype=np.float32))
        z = self.torch.from_numpy(np.stack(noise))
        if self.policy is not None:
            images = self.model.generate(self.bundle.nets, self.torch.from_numpy(np.stack(labels)), z)
            confidences = [None] * len(images)
        else:
            images = self.model.generate(self.bundle.nets, None, z)
            labels, confidences = self.model.pseudo_label(self.bundle.nets, images)
        names = self.bundle.label_names
        samples: list[Sample | Dropped] = []
        for index, vector, image, confidence in zip(indices, labels, images, confidences):
            if confidence is not None and confidence < self.threshold:
                samples.append(Dropped(index, self.PSEUDO_LABEL_DROP))
                continue
            label = primary_label(vector, names)
            metadata = {"kind": "image", "source": self.source,
                        "labels": {name: float(v) for name, v in zip(names, vector)},
                        "primary_label": names[label]}
            if confidence is not None:
                metadata["pseudo_label"] = {"confidence": float(confidence), "threshold": self.threshold}
            samples.append(Sample(index=index, images={"png": image}, label=label, metadata=metadata))
        return samples


class Captioner:
    """A captioning bundle (factory.models.spec.Captioning), loaded once per actor: reports for images.

    `bundle_sha256` is the bundle the run was planned with; one replaced in place since then would make
    the run's shards disagree, so it stops the run instead."""

    def __init__(self, bundle_url: str, bundle_sha256: str):
        import torch

        from factory.models import registry

        self.bundle = load_planned_bundle(bundle_url, bundle_sha256, "cuda" if torch.cuda.is_available() else "cpu")
        self.model = registry.spec(self.bundle.recipe).product(Captioning)
        if self.model is None:
            raise FactoryError(f"{bundle_url}: a {self.bundle.recipe} bundle does not write reports for images")
        self.source = bundle_source(self.bundle)

    def reports(self, images: Sequence[np.ndarray]) -> list[str]:
        """One report per (H, W) uint8 image; each a function of its image alone."""
        if not images:
            return []
        ids = self.model.caption(self.bundle.nets, np.stack(images))
        return self.model.decode_reports(ids, self.bundle.vocabulary)


class CaptionedImageProducer(BundleImageProducer):
    """Image/report pairs from an image-only bundle and a captioning bundle: sample n is the image
    bundle's sample n (labels, noise and pseudo-label drops exactly as BundleImageProducer's) with the
    captioning bundle's report of its image."""

    sample_kind = "pair"

    def __init__(self, seed: int, bundle_url: str, labels: str | dict[str, int] | None, count: int,
                 threshold: float | None, reports_url: str, reports_sha256: str, bundle_sha256: str | None = None):
        super().__init__(seed, bundle_url, labels, count, threshold, bundle_sha256)
        self.captioner = Captioner(reports_url, reports_sha256)

    def make_batch(self, indices: range) -> list[Sample | Dropped]:
        made = super().make_batch(indices)
        kept = [sample for sample in made if isinstance(sample, Sample)]
        for sample, report in zip(kept, self.captioner.reports([s.images["png"] for s in kept])):
            sample.report = report
            sample.metadata.update(kind="pair", report_source=self.captioner.source)
        return made


class DatasetCaptionProducer:
    """Real chest X-rays of a dataset with the reports a captioning bundle writes for them.

    Sample n is study n of the dataset's index, read through its layout's adapter at `size` and written
    as 8-bit PNG with the report, the dataset's labels for it and its study id. Captioning draws no random
    numbers, so any shard regenerates bit for bit."""

    sample_kind = "caption"

    def __init__(self, bundle_url: str, bundle_sha256: str, source: str, layout: str, size: int,
                 dataset_sha256: str):
        self.captioner = Captioner(bundle_url, bundle_sha256)
        self.dataset = open_planned_dataset(source, layout, size, dataset_sha256)
        self.root, self.layout = source, layout
        self.names = list(self.dataset.label_names)

    def make_batch(self, indices: range) -> list[Sample]:
        studies = [self.dataset[index] for index in indices]
        images = [dataset_image(study) for study in studies]
        samples = []
        for index, study, image, report in zip(indices, studies, images, self.captioner.reports(images)):
            labels, label, metadata = dataset_labels(study, self.names)
            samples.append(Sample(
                index=index, images={"png": image}, report=report, label=label,
                metadata={"kind": "caption", "source": self.captioner.source, **metadata,
                          "real_image": real_image(study, self.root, self.layout)},
            ))
        return samples


def open_planned_dataset(source: str, layout: str, size: int, dataset_sha256: str):
    """The dataset a run was planned with, through its layout's adapter; one whose index changed since
    stops the run (its shards would disagree), naming it."""
    from factory.data.adapters import open_dataset

    dataset = open_dataset(source, layout, size=size)
    if dataset.index_sha256() != dataset_sha256:
        raise BadInputError(source, "its studies changed since this run was planned; write the run to a new location")
    return dataset


def dataset_image(study) -> np.ndarray:
    """A dataset study's image (1, S, S) in [0, 1] as 8-bit (S, S)."""
    return np.rint(study.image[0].clamp(0, 1).numpy() * 255).astype(np.uint8)


def dataset_labels(study, names: Sequence[str]) -> tuple[dict[str, float], int, dict[str, Any]]:
    """(the labels the dataset gives the study, leaving out unmentioned ones; index of its primary label;
    the sample metadata naming both and the study)."""
    labels = {name: float(v) for name, v in zip(names, study.labels.tolist()) if not np.isnan(v)}
    label = primary_label(np.array([labels.get(name, 0.0) for name in names]), names)
    return labels, label, {"labels": labels, "primary_label": names[label], "source_study_id": study.study_id}


def real_image(study, root: str, layout: str) -> dict[str, str]:
    """Where a sample's real image came from (schemas/sample.schema.json `real_image`)."""
    return {"dataset": root, "layout": layout, "file": study.meta.get("image", study.study_id)}


class DatasetExplanationProducer:
    """Real chest X-rays of a dataset, each explained by a bundle whose model explains them
    (factory.models.spec.Explanation, through factory.produce.explain).

    Sample n is study n of the dataset's index, read through its layout's adapter at the bundle's image
    size: `png` the 8-bit input, `cf.png` the counterfactual X-ray of the nearest alternative diagnosis,
    `txt` the caption that justifies the diagnosis, `cls` and `labels` the dataset's, and the json's
    `explanation` the diagnosis with every diagnosis's probability and the alternative. Each sample is
    explained alone with the seed factory.produce.explain.sample_seed(seed, n), so it depends on
    (run seed, n) and the spec only and any shard regenerates bit for bit."""

    sample_kind = "explanation"

    def __init__(self, seed: int, bundle_url: str, bundle_sha256: str, source: str, layout: str, size: int,
                 dataset_sha256: str):
        import torch

        from factory.produce.explain import explainer

        self.bundle = load_planned_bundle(bundle_url, bundle_sha256, "cuda" if torch.cuda.is_available() else "cpu")
        explainer(self.bundle)  # a bundle replaced by one that does not explain stops the run here
        self.dataset = open_planned_dataset(source, layout, size, dataset_sha256)
        self.seed, self.root, self.layout = seed, source, layout
        self.names = list(self.dataset.label_names)
        self.source = bundle_source(self.bundle)

    def make_batch(self, indices: range) -> list[Sample]:
        from factory.produce.explain import explain_images, sample_seed

        studies = [self.dataset[index] for index in indices]
        images = np.stack([dataset_image(study) for study in studies])
        found = explain_images(self.bundle, images, seed=[sample_seed(self.seed, index) for index in indices])
        samples = []
        for index, study, image, item in zip(indices, studies, images, found):
            labels, label, metadata = dataset_labels(study, self.names)
            samples.append(Sample(
                index=index, images={"png": image, "cf.png": item.counterfactual}, report=item.caption, label=label,
                metadata={"kind": "explanation", "source": self.source, **metadata,
                          "real_image": real_image(study, self.root, self.layout),
                          "explanation": {key: value for key, value in item.to_json().items() if key != "caption"}},
            ))
        return samples


class ReportImageProducer:
    """An X-ray for each report of a report corpus, by a bundle whose model draws them from reports
    (factory.models.spec.ReportImaging), so that the corpus becomes image/report pairs.

    Sample n is report n of the corpus in its adapter's order. Its labels are the rule labeler's
    reading of the report (factory.data.text.labeler); its diagnosis, which the generator is
    conditioned on with the report's words, is the first positive finding among the bundle's label
    names, else No Finding; its noise comes from a generator seeded by (seed, n)."""

    sample_kind = "pair"

    def __init__(self, seed: int, bundle_url: str, bundle_sha256: str, captions: str, layout: str,
                 corpus_sha256: str):
        import torch

        from factory.data.adapters import open_dataset
        from factory.models import registry

        self.torch = torch
        # The run's identity holds both hashes: a bundle or corpus replaced in place since planning
        # would make shards of one run disagree, so it stops the run instead.
        self.bundle = load_planned_bundle(bundle_url, bundle_sha256, "cuda" if torch.cuda.is_available() else "cpu")
        self.model = registry.spec(self.bundle.recipe).product(ReportImaging)
        if self.model is None:
            raise FactoryError(f"{bundle_url}: a {self.bundle.recipe} bundle does not draw X-rays from reports")
        self.corpus = open_dataset(captions, layout)
        if self.corpus.index_sha256() != corpus_sha256:
            raise BadInputError(captions, "its studies changed since this run was planned; "
                                          "write the run to a new location")
        self.seed = seed
        self.noise_dim = self.model.noise_dim(self.bundle.model_config)
        self.source = bundle_source(self.bundle)

    def make_batch(self, indices: range) -> list[Sample]:
        from factory.data.text.labeler import label_report

        names = list(self.bundle.label_names)
        studies = [self.corpus.load(index, image=False) for index in indices]  # the reports alone
        for study in studies:
            if not (study.report or "").strip():
                raise BadInputError(study.meta.get("image", study.study_id), "has no report to draw an X-ray from")
        labels = [label_report(study.report) for study in studies]
        diagnoses = [primary_label(np.array([found.get(name, 0.0) for name in names]), names) for found in labels]
        noise = np.stack([np.random.default_rng([self.seed, index]).standard_normal(self.noise_dim, dtype=np.float32)
                          for index in indices])
        descriptions = self.model.describe([s.report for s in studies], diagnoses, self.bundle.vocabulary,
                                           self.bundle.model_config)
        images = self.model.generate(self.bundle.nets, self.torch.from_numpy(descriptions),
                                     self.torch.from_numpy(noise), self.bundle.model_config)
        return [Sample(index=index, images={"png": image}, report=study.report, label=diagnosis,
                       metadata={"kind": "pair", "source": self.source, "labels": found,
                                 "primary_label": names[diagnosis], "source_study_id": study.study_id})
                for index, study, found, diagnosis, image in zip(indices, studies, labels, diagnoses, images)]


class TranslationProducer:
    """Source slices translated into CT by a translation bundle (DUIIT and kin).

    Sample n is slice n of the run's slice plan (factory.produce.translate_plan). The actor opens the
    source dataset itself, reads each study through the volume adapter (resampled to the bundle's
    image size, MRI/PET normalised as in training), translates with the generator of the study's
    modality and returns:
      ct.png   16-bit: round(HU) + 1024, clipped to 0..65535 (the volume adapter's and the phantom's
               PNG convention for CT). The generator's range is the model's CT window (DUIIT: -20..120
               HU), so the values lie within it.
      src.png  16-bit: the generator's input, the normalised source clipped to the model's
               source_range [lo, hi] and mapped onto 0..65535.
    Each sample's json records both mappings under `encoding`, with the age label, source modality,
    study id, slice index and count, spacing and the bundle. Translation draws no random numbers; it
    depends on the plan, the bundle and the batch layout only, so any shard regenerates bit for bit.
    """

    sample_kind = "translation"

    def __init__(self, bundle_url: str, bundle_sha256: str, plan: dict[str, Any]):
        import torch

        from factory import storage
        from factory.data.adapters.volumes import open_volumes
        from factory.models import registry
        from factory.produce.translate_plan import LABELS_NAME, SlicePlan, labels_sha256

        self.torch = torch
        self.plan = SlicePlan(plan)
        self.labels_url = storage.join(self.plan.root, LABELS_NAME)
        # The run's identity holds both hashes: a dataset or bundle replaced in place since planning
        # would make shards of one run disagree, so it stops the run instead.
        if labels_sha256(self.plan.root) != plan["labels_sha256"]:
            raise BadInputError(self.labels_url, "changed since this run was planned; "
                                                 "write the translation to a new location")
        self.bundle = load_planned_bundle(bundle_url, bundle_sha256, "cuda" if torch.cuda.is_available() else "cpu")
        self.model = registry.spec(self.bundle.recipe).product(Translation)
        if self.model is None:
            raise FactoryError(f"{bundle_url}: a {self.bundle.recipe} bundle does not translate images")
        self.config = self.bundle.model_config
        untranslatable = sorted(set(self.plan.modalities) - set(self.config["sources"]))
        if untranslatable:
            raise FactoryError(f"{bundle_url}: translates {self.config['sources']}, not {untranslatable}")
        self.volumes = open_volumes(self.plan.root, size=self.config["image_size"])
        self.rows = {row["study_id"]: i for i, row in enumerate(self.volumes.rows)}
        self.source = bundle_source(self.bundle)
        low, high = self.config["source_range"]
        self.src_encoding = {"units": "source / its 99.5th percentile", "scale": (high - low) / SIXTEEN_BIT,
                             "offset": low}
        self._loaded: tuple[str, Any] | None = None  # consecutive slices of one volume decode it once

    def _study(self, planned):
        if self._loaded is not None and self._loaded[0] == planned.study_id:
            return self._loaded[1]
        if planned.study_id not in self.rows:
            raise BadInputError(self.labels_url, f"study {planned.study_id} of the run's plan is missing")
        study = self.volumes.load(self.rows[planned.study_id])
        slices = 1 if study.image.ndim == 3 else study.image.shape[1]
        if slices != planned.slices:
            raise BadInputError(study.meta["source"], f"holds {slices} slices; its header promised "
                                                      f"{planned.slices} when the run was planned")
        self._loaded = (planned.study_id, study)
        return study

    def make_batch(self, indices: range) -> list[Sample]:
        located = [(index, *self.plan.locate(index)) for index in indices]
        studies = [self._study(planned) for _, planned, _ in located]
        planes = [s.image[0] if s.image.ndim == 3 else s.image[0, z] for s, (_, _, z) in zip(studies, located)]
        hounsfield: list[Any] = [None] * len(located)
        for modality in sorted({planned.modality for _, planned, _ in located}):
            positions = [i for i, (_, planned, _) in enumerate(located) if planned.modality == modality]
            inputs = self.model.to_model_space(self.torch.stack([planes[i] for i in positions])[:, None],
                                               modality, self.config)
            translated = self.model.translate(self.bundle.nets, inputs, modality)
            values = self.model.ct_to_hounsfield(translated, self.config)[:, 0].cpu().numpy()
            for position, plane in zip(positions, values):
                hounsfield[position] = plane
        low, high = self.config["source_range"]
        samples = []
        for (index, planned, z), study, plane, hu in zip(located, studies, planes, hounsfield):
            ct = np.clip(np.rint(hu.astype(np.float64)) + CT_PNG_OFFSET, 0, SIXTEEN_BIT).astype(np.uint16)
            unit = (plane.numpy().astype(np.float64).clip(low, high) - low) / (high - low)
            src = np.rint(unit * SIXTEEN_BIT).astype(np.uint16)
            metadata = {
                "kind": "translation", "source": self.source,
                "labels": {} if planned.age is None else {"age": planned.age},
                "source_modality": planned.modality, "source_study_id": planned.study_id,
                "slice_index": z, "slice_count": planned.slices,
                "spacing": [None if np.isnan(s) else float(s) for s in study.meta["spacing"]],
                "encoding": {"ct.png": {"units": "HU", "scale": 1.0, "offset": -float(CT_PNG_OFFSET)},
                             "src.png": self.src_encoding},
            }
            samples.append(Sample(index=index, images={"ct.png": ct, "src.png": src}, metadata=metadata))
        return samples
