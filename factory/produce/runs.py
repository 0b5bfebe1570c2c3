"""From a validated ProduceConfig (or TranslateConfig, CaptionConfig, ExplainConfig) to a finished run:
one function each for the CLI and the Ray job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from factory import storage
from factory.config import CaptionConfig, ExplainConfig, ProduceConfig, TranslateConfig, yaml_problem
from factory.errors import BadInputError, FactoryError
from factory.produce.pool import produce
from factory.produce.producer_specs import (BundleImages, BundlePairs, BundleTranslation, CaptionedImages,
                                            DatasetCaptions, DatasetExplanations, PhantomPairs, ProducerSpec,
                                            ReportImages)
from factory.produce.shards import RunSpec, canonical_sha256


def label_policy(labels: str) -> str | dict[str, int]:
    """balanced | prior | a YAML/JSON file mapping label combinations ("A+B") to counts."""
    if labels in ("balanced", "prior"):
        return labels
    try:
        counts = yaml.safe_load(Path(labels).read_text())
    except OSError as err:
        raise BadInputError(labels, f"cannot read label counts ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise BadInputError(labels, "not valid YAML/JSON (not UTF-8 text)") from err
    except yaml.YAMLError as err:
        raise BadInputError(labels, f"not valid YAML/JSON: {yaml_problem(err)}") from err
    if not isinstance(counts, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in counts.values()):
        raise BadInputError(labels, "must map label combinations (e.g. 'Cardiomegaly+Edema') to counts")
    return {str(k): int(v) for k, v in counts.items()}


def _label_policy_for(config: ProduceConfig, bundle: dict[str, Any]) -> str | dict[str, int]:
    """The run's label policy for a label-conditioned bundle, checked against the bundle before Ray starts."""
    labels = label_policy(config.labels or "balanced")
    if labels == "prior" and not bundle["training_data"].get("label_prior"):
        raise BadInputError("--labels prior", "this bundle records no training label prior; "
                                              "use balanced or explicit counts per combination")
    if isinstance(labels, dict):
        if sum(labels.values()) != config.count:
            raise BadInputError(config.labels, f"label counts add up to {sum(labels.values())}, "
                                               f"not the run's count {config.count}")
        # The actors check names too, but only after Ray has started: a misspelt one stops the run here.
        unknown = sorted({name for combo in labels for name in combo.split("+")} - set(bundle["label_names"]))
        if unknown:
            raise BadInputError(config.labels, f"unknown labels {unknown}; "
                                               f"this bundle knows {bundle['label_names']}")
    return labels


def captioning_bundle(url: str, option: str) -> dict[str, Any]:
    """A captioning bundle's metadata, its files verified, before Ray starts; refused (naming `option`) when
    its model writes no reports for images."""
    from factory.models import registry
    from factory.models.bundle import METADATA_NAME
    from factory.models.bundle_metadata import read_verified
    from factory.models.spec import Captioning

    bundle = read_verified(url)
    model = registry.spec(bundle["recipe"])
    if model.product(Captioning) is None:
        raise BadInputError(f"{option} {storage.join(url, METADATA_NAME)}",
                            f"a {bundle['recipe']} bundle makes {', '.join(model.product_kinds) or 'nothing'}, "
                            "not reports for images (a captioning model, e.g. medrat)")
    return bundle


def _bundle_producer(config: ProduceConfig) -> tuple[BundlePairs | BundleImages, str]:
    """(producer, model name) of a bundle run; the producer follows from the product the model declares."""
    from factory.models import registry
    from factory.models.bundle import METADATA_NAME
    from factory.models.bundle_metadata import read_verified
    from factory.models.spec import ImageSampling, PairSampling

    bundle = read_verified(config.bundle)
    recipe = bundle["recipe"]
    model = registry.spec(recipe)
    pairs, images = model.product(PairSampling), model.product(ImageSampling)
    if pairs is None and images is None:
        makes = ", ".join(model.product_kinds) or "nothing to produce"
        raise BadInputError(storage.join(config.bundle, METADATA_NAME),
                            f"a {recipe} bundle makes {makes}, not image/report pairs or labelled images"
                            + (" (use medsynth translate)" if "translations" in model.product_kinds else ""))
    if config.reports is not None and pairs is not None:
        raise BadInputError("--reports", f"a {recipe} bundle writes its own reports; --reports captions the images "
                                         "of an image-only bundle")
    common = {"bundle": storage.absolute(config.bundle), "bundle_sha256": bundle["sha256"], "count": config.count}
    if config.reports is not None:
        captions = captioning_bundle(config.reports, "--reports")
        images_spec, _ = _image_producer(config, bundle, recipe, images, common)
        return CaptionedImages(**images_spec.model_dump(exclude={"type"}), reports=storage.absolute(config.reports),
                               reports_sha256=captions["sha256"]), f"{recipe}-{captions['recipe']}"
    if pairs is None:
        return _image_producer(config, bundle, recipe, images, common)
    if config.threshold is not None:
        raise BadInputError("--threshold", f"a {recipe} bundle is conditioned on the labels chosen; "
                                           "a pseudo-label threshold applies to unconditional image bundles")
    return BundlePairs(**common, labels=_label_policy_for(config, bundle)), recipe


def _image_producer(config: ProduceConfig, bundle: dict[str, Any], recipe: str, images,
                    common: dict[str, Any]) -> tuple[BundleImages, str]:
    if not images.conditional:
        if config.labels is not None:
            raise BadInputError("--labels", f"a {recipe} bundle is unconditional: its classifier labels the images "
                                            "it makes, so labels are not chosen")
        threshold = config.threshold if config.threshold is not None else images.threshold(bundle["model_config"])
        return BundleImages(**common, threshold=float(threshold)), recipe
    if config.threshold is not None:
        raise BadInputError("--threshold", f"a {recipe} bundle is conditioned on the labels chosen; "
                                           "a pseudo-label threshold applies to unconditional image bundles")
    return BundleImages(**common, labels=_label_policy_for(config, bundle)), recipe


def _report_producer(config: ProduceConfig) -> tuple[ReportImages, str]:
    """(producer, model name) of a run over a report corpus (--captions): one X-ray per report. The
    bundle's sha256 and the corpus index's sha256 join the run's identity."""
    from factory.data.adapters import open_dataset
    from factory.models import registry
    from factory.models.bundle import METADATA_NAME, read_metadata, verify_files
    from factory.models.spec import ReportImaging

    bundle = read_metadata(config.bundle)
    model = registry.spec(bundle["recipe"])
    if model.product(ReportImaging) is None:
        raise BadInputError(f"--bundle {storage.join(config.bundle, METADATA_NAME)}",
                            f"a {bundle['recipe']} bundle makes {', '.join(model.product_kinds) or 'nothing'}, "
                            "not X-rays from reports (e.g. justify does)")
    verify_files(config.bundle, bundle)  # damaged weights are refused before Ray starts
    corpus = open_dataset(config.captions, config.layout)
    if config.count > len(corpus):
        raise BadInputError(config.captions, f"holds {len(corpus)} {config.layout} reports, fewer than "
                                             f"--count {config.count}")
    producer = ReportImages(bundle=storage.absolute(config.bundle), bundle_sha256=bundle["sha256"],
                            captions=storage.absolute(config.captions), layout=config.layout,
                            corpus_sha256=corpus.index_sha256(), reports=len(corpus))
    return producer, bundle["recipe"]


def production_spec(config: ProduceConfig, command: str = "") -> tuple[ProducerSpec, RunSpec]:
    """(producer spec for the actors, run spec) of a production run. A bundle's producer follows from
    what its model makes (its spec's products): image/report pairs, else labelled images; with a
    report corpus (--captions), an X-ray for each report."""
    producer: ProducerSpec
    if config.captions is not None:
        producer, name = _report_producer(config)
    elif config.bundle is not None:
        producer, name = _bundle_producer(config)
    else:
        producer = PhantomPairs(size=config.size)
        name = config.source
    gates = [gate.model_dump(exclude_none=True) for gate in config.gates]
    settings = {"producer": producer.echo(), "shard_size": config.shard_size, "batch_size": config.batch_size,
                "gates": gates}
    # Same settings, same run id: running the same command again resumes instead of starting over.
    run_id = config.run_id or f"{name}-s{config.seed}-{canonical_sha256([settings, config.count])[:8]}"
    spec = RunSpec(run_id=run_id, requested=config.count, shard_size=config.shard_size, seed=config.seed,
                   sample_kind=producer.sample_kind, config=settings, command=command)
    return producer, spec


def run_production(config: ProduceConfig, command: str = "", progress: bool = True) -> dict[str, Any]:
    storage.check_writable(config.out)  # an unusable --out is refused before Ray starts
    producer, spec = production_spec(config, command)
    return produce(producer, config.out, spec, actors=config.actors, cpus_per_actor=config.cpus_per_actor,
                   gpus_per_actor=config.gpus_per_actor, batch_size=config.batch_size,
                   gates=spec.config["gates"], progress=progress)


def translation_spec(config: TranslateConfig, command: str = "", progress: bool = True):
    """(producer spec for the actors, run spec, slice plan, bundle identity) of a translation run.

    The run's identity holds the bundle's sha256 and the plan's sha256 (which covers labels.csv and
    every study's slice count), so translating changed data or with another bundle is another run."""
    from factory.models import registry
    from factory.models.bundle import METADATA_NAME
    from factory.models.bundle_metadata import read_verified
    from factory.models.spec import Translation
    from factory.produce.translate_plan import build_plan

    bundle = read_verified(config.bundle)
    model_config = bundle["model_config"]
    if registry.spec(bundle["recipe"]).product(Translation) is None:
        raise FactoryError(f"{storage.join(config.bundle, METADATA_NAME)}: a {bundle['recipe']} bundle does not "
                           "translate images (translation needs a bundle of a model that translates, e.g. duiit)")
    plan = build_plan(config.source, model_config["sources"], config.modality, progress=progress)
    producer = BundleTranslation(bundle=storage.absolute(config.bundle), bundle_sha256=bundle["sha256"],
                                 source=plan.root, modality=config.modality, image_size=model_config["image_size"],
                                 plan_sha256=plan.sha256, studies=len(plan.studies), volumes=len(plan.volumes()),
                                 plan=plan.document)
    settings = {"producer": producer.echo(), "shard_size": config.shard_size, "batch_size": config.batch_size}
    # Same settings, same run id: running the same command again resumes instead of starting over.
    run_id = config.run_id or f"translate-{bundle['recipe']}-s{config.seed}-{canonical_sha256(settings)[:8]}"
    spec = RunSpec(run_id=run_id, requested=plan.count, shard_size=config.shard_size, seed=config.seed,
                   sample_kind=producer.sample_kind, config=settings, command=command)
    identity = {"bundle_id": bundle["bundle_id"], "bundle_sha256": bundle["sha256"]}
    return producer, spec, plan, identity


def run_translation(config: TranslateConfig, command: str = "", progress: bool = True,
                    on_commit=None, actor_name_prefix: str | None = None) -> dict[str, Any]:
    """Translate every planned slice into shards, then write the volumes (see factory.produce.volumes)
    and the manifest, whose `extra.volumes` lists the Zarr arrays. `on_commit` and
    `actor_name_prefix` are passed to the pool (see factory.produce.pool.produce)."""
    from factory.produce.volumes import write_volumes

    storage.check_writable(config.out)  # an unusable --out is refused before planning and before Ray starts
    producer, spec, plan, identity = translation_spec(config, command, progress)
    out = storage.absolute(config.out)

    def volumes(records):
        written = write_volumes(out, spec, plan.volumes(), records, identity,
                                cpus_per_task=min(1.0, config.cpus_per_actor), progress=progress)
        return {"volumes": written} if written else None

    return produce(producer, out, spec, actors=config.actors, cpus_per_actor=config.cpus_per_actor,
                   gpus_per_actor=config.gpus_per_actor, batch_size=config.batch_size, progress=progress,
                   on_commit=on_commit, actor_name_prefix=actor_name_prefix, finish=volumes)


def _dataset_run(producer_type, config: CaptionConfig | ExplainConfig, bundle: dict[str, Any], size: int,
                 verb: str, command: str) -> tuple[Any, RunSpec]:
    """(producer spec, run spec) of a run over a dataset's studies: the bundle's sha256 and the dataset
    index's sha256 are the run's identity, so the same command on changed data or with another bundle is
    another run, and the same command again resumes instead of starting over."""
    from factory.data.adapters import open_dataset

    dataset = open_dataset(config.source, config.layout, size=size)
    if len(dataset) == 0:
        raise BadInputError(config.source, f"holds no {config.layout} studies to {verb}")
    count = min(config.count or len(dataset), len(dataset))
    producer = producer_type(bundle=storage.absolute(config.bundle), bundle_sha256=bundle["sha256"],
                             source=storage.absolute(config.source), layout=config.layout, size=size,
                             dataset_sha256=dataset.index_sha256(), studies=len(dataset))
    settings = {"producer": producer.echo(), "shard_size": config.shard_size, "batch_size": config.batch_size}
    run_id = config.run_id or f"{verb}-{bundle['recipe']}-s{config.seed}-{canonical_sha256([settings, count])[:8]}"
    spec = RunSpec(run_id=run_id, requested=count, shard_size=config.shard_size, seed=config.seed,
                   sample_kind=producer.sample_kind, config=settings, command=command)
    return producer, spec


def caption_spec(config: CaptionConfig, command: str = "") -> tuple[DatasetCaptions, RunSpec]:
    """(producer spec, run spec) of a captioning run (see _dataset_run)."""
    bundle = captioning_bundle(config.bundle, "--bundle")
    size = config.size or bundle["model_config"]["image_size"]
    return _dataset_run(DatasetCaptions, config, bundle, size, "caption", command)


def explanation_spec(config: ExplainConfig, command: str = "") -> tuple[DatasetExplanations, RunSpec]:
    """(producer spec, run spec) of an explanation run (see _dataset_run); the images are read at the
    bundle's image size."""
    from factory.produce.explain import explaining_bundle

    bundle = explaining_bundle(config.bundle, "--bundle")
    return _dataset_run(DatasetExplanations, config, bundle, int(bundle["model_config"]["image_size"]), "explain",
                        command)


def _run_over_dataset(config: CaptionConfig | ExplainConfig, make_spec, command: str, progress: bool) -> dict[str, Any]:
    storage.check_writable(config.out)  # an unusable --out is refused before Ray starts
    producer, spec = make_spec(config, command)
    return produce(producer, config.out, spec, actors=config.actors, cpus_per_actor=config.cpus_per_actor,
                   gpus_per_actor=config.gpus_per_actor, batch_size=config.batch_size, progress=progress)


def run_captioning(config: CaptionConfig, command: str = "", progress: bool = True) -> dict[str, Any]:
    return _run_over_dataset(config, caption_spec, command, progress)


def run_explanation(config: ExplainConfig, command: str = "", progress: bool = True) -> dict[str, Any]:
    return _run_over_dataset(config, explanation_spec, command, progress)
