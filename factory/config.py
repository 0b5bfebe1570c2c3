"""Job configurations: pydantic models, read from YAML with `key=value` overrides, echoed into
manifests and checkpoints. A validation error names the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from factory.errors import BadInputError

Config = TypeVar("Config", bound=BaseModel)


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateConfig(JobConfig):
    """A quality gate (factory.produce.gates): drop samples whose score falls outside [min, max]."""

    scorer: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="importable module:function")
    min: float | None = None
    max: float | None = None
    reason: str | None = None
    quality_key: str | None = None

    @model_validator(mode="after")
    def _a_bound(self):
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


# The largest run one command takes (docs/architecture.md, "A run on storage"). Sample keys hold the
# index in ten digits; a billion samples (at several KB each, terabytes) is past where a run is better
# split into several (other seeds). The manifest lists every shard (about 0.6 KB of JSON each) and the
# driver holds every commit record until it writes it (about 2.7 KB each, 7 KB per shard at its peak;
# docs/bench/load.md), so 10^5 shards keep the manifest near 60 MB and the driver within 0.7 GB above
# its start; a billion samples then take shards of 10^4.
MAX_COUNT = 10**9
MAX_SHARDS = 10**5


def run_size_problem(count: int, shard_size: int) -> str | None:
    """Why a run of `count` samples in shards of `shard_size` is past the maximum; None when it is not."""
    if count > MAX_COUNT:
        return f"{count} samples, more than the {MAX_COUNT} one run takes"
    shards = -(-count // shard_size)
    if shards <= MAX_SHARDS:
        return None
    return (f"{count} samples in shards of {shard_size} make {shards} shards, more than the {MAX_SHARDS} "
            f"one run takes; use a shard size of at least {-(-count // MAX_SHARDS)}")


class ProduceConfig(JobConfig):
    """`medsynth produce` / jobs/produce.py."""

    out: str = Field(description="output URL for shards and manifest (local path or s3://)")
    count: int = Field(gt=0, le=MAX_COUNT, description=f"samples to produce (at most {MAX_COUNT})")
    bundle: str | None = Field(None, description="generator bundle URL")
    source: Literal["phantom-cxr"] | None = Field(None, description="built-in phantom instead of a bundle")
    actors: int = Field(1, gt=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    shard_size: int = Field(1000, gt=0)
    batch_size: int = Field(32, gt=0)
    seed: int = Field(0, ge=0)
    size: int = Field(64, ge=16, le=1024, description="image side (phantom source)")
    labels: str | None = Field(None, description="bundle runs of a label-conditioned model: balanced (the default), "
                                                 "prior, or a YAML/JSON file of counts per label combination")
    threshold: float | None = Field(None, ge=0, le=1, description="bundle runs of an unconditional image model: "
                                                                  "drop samples whose pseudo-label confidence is "
                                                                  "below this (default: the bundle's)")
    reports: str | None = Field(None, description="captioning bundle URL (medrat): a report for every image of an "
                                                  "image-only bundle, so the run writes image/report pairs")
    captions: str | None = Field(None, description="report corpus root (with --layout): a bundle that draws X-rays "
                                                   "from reports (justify) makes one per report, the first COUNT")
    layout: Literal["mimic-cxr", "iu-xray", "folder"] | None = Field(None, description="layout of --captions")
    run_id: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    gates: tuple[GateConfig, ...] = Field((), description="quality gates applied before writing")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.bundle is None) == (self.source is None):
            raise ValueError("give exactly one of bundle and source")
        if (self.captions is None) != (self.layout is None):
            raise ValueError("captions and layout go together: a report corpus and its layout")
        if self.captions is not None and (self.bundle is None or self.labels is not None
                                          or self.threshold is not None or self.reports is not None):
            raise ValueError("captions take a bundle and no labels, threshold or reports: the labels come from each "
                             "report, which is the corpus's own")
        return self

    @field_validator("shard_size")
    @classmethod
    def _shards_within_limit(cls, shard_size: int, info):
        problem = run_size_problem(info.data["count"], shard_size) if "count" in info.data else None
        if problem:
            raise ValueError(problem)
        return shard_size

    @field_validator("reports")
    @classmethod
    def _reports_for_a_bundle(cls, reports, info):
        if info.data.get("source") is not None and reports is not None:
            raise ValueError("the phantom source writes its own reports; reports apply to image bundle runs")
        return reports

    @field_validator("labels")
    @classmethod
    def _labels_condition_a_bundle(cls, labels, info):
        if info.data.get("source") is not None and labels not in (None, "balanced"):
            raise ValueError("the phantom source draws its own findings; labels apply to bundle runs")
        return labels

    @field_validator("threshold")
    @classmethod
    def _threshold_for_a_bundle(cls, threshold, info):
        if info.data.get("source") is not None and threshold is not None:
            raise ValueError("the phantom source labels its own studies; threshold applies to bundle runs")
        return threshold


class TranslateConfig(JobConfig):
    """`medsynth translate` / jobs/translate.py: a translation bundle (duiit) over a source dataset's
    slices into CT shards, and its 3-D volumes into a Zarr group beside them (factory.produce.translate_plan)."""

    out: str = Field(description="output URL for shards, volumes.zarr and manifest (local path or s3://)")
    bundle: str = Field(description="translation bundle URL (duiit)")
    source: str = Field(description="source dataset root in the volumes layout: labels.csv + NIfTI/DICOM/Zarr/PNG")
    modality: Literal["mri", "pet"] | None = Field(
        None, description="translate only this modality's studies (default: every modality the bundle translates)")
    actors: int = Field(1, gt=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    shard_size: int = Field(256, gt=0, description="slices per shard")
    batch_size: int = Field(16, gt=0, description="slices per generator call")
    seed: int = Field(0, ge=0, description="recorded with every sample; translation itself draws no random numbers")
    run_id: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")


class CaptionConfig(JobConfig):
    """`medsynth caption`: a captioning bundle (medrat) writes a report for each real image of a dataset,
    into shards of (image, report, labels, json naming the study)."""

    out: str = Field(description="output URL for shards and manifest (local path or s3://)")
    bundle: str = Field(description="captioning bundle URL (medrat)")
    source: str = Field(description="dataset root (local path or fsspec URL) in one of the chest X-ray layouts")
    layout: Literal["mimic-cxr", "iu-xray", "chexpert", "nih", "folder"] = Field(description="layout of source")
    count: int | None = Field(None, gt=0, le=MAX_COUNT, description="caption only the first COUNT studies "
                                                                    "(default: all)")
    size: int | None = Field(None, ge=16, le=4096, description="side of the images written to the shards "
                                                               "(default: the bundle's image size)")
    actors: int = Field(1, gt=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    shard_size: int = Field(1000, gt=0)
    batch_size: int = Field(32, gt=0)
    seed: int = Field(0, ge=0, description="recorded with every sample; captioning draws no random numbers")
    run_id: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ExplainConfig(JobConfig):
    """`medsynth explain --layout L DATA --out URL`: a bundle that explains chest X-rays (justify) writes,
    for each real image of a dataset, its explanation into shards of (image, justification caption,
    counterfactual image, labels, json) with the production actor pool."""

    out: str = Field(description="output URL for shards and manifest (s3:// or another fsspec URL)")
    bundle: str = Field(description="bundle URL of a model that explains (justify)")
    source: str = Field(description="dataset root (local path or fsspec URL) in one of the chest X-ray layouts")
    layout: Literal["mimic-cxr", "iu-xray", "chexpert", "nih", "folder"] = Field(description="layout of source")
    count: int | None = Field(None, gt=0, le=MAX_COUNT, description="explain only the first COUNT studies "
                                                                    "(default: all)")
    actors: int = Field(1, gt=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    shard_size: int = Field(1000, gt=0)
    batch_size: int = Field(8, gt=0, description="studies an actor reads and writes at a time")
    seed: int = Field(0, ge=0, description="sample n's counterfactual search draws from (seed, n)")
    run_id: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")


class EvaluateConfig(JobConfig):
    """`medsynth evaluate RUN_URL` / jobs/evaluate.py: a run measured against real data, as an HTML report.

    Pair and image runs need `judge`; translation runs take `real` (volumes layout), `paired`, `window`
    and `age_epochs` instead (factory.evaluate.translation)."""

    run: str = Field(description="the run to evaluate (folder or s3:// URL with a manifest)")
    out: str = Field(description="the HTML report to write; its metrics go beside it as .json")
    judge: str | None = Field(None, description="judge bundle URL (`medsynth evaluate judge` writes one); "
                                                "pair and image runs")
    real: str | None = Field(None, description="real studies the generator did not train on (default: phantoms)")
    real_layout: Literal["mimic-cxr", "iu-xray", "chexpert", "nih", "folder", "volumes"] | None = None
    train: str | None = Field(None, description="the generator's training studies, for the memorization audit")
    train_layout: Literal["mimic-cxr", "iu-xray", "chexpert", "nih", "folder"] | None = None
    paired: str | None = Field(None, description="translation runs: CT of the source subjects, volumes layout, "
                                                 "named by the source study ids (default: the phantom's paired CT)")
    window: tuple[float, float] | None = Field(None, description="translation runs: HU window LOW HIGH (default: "
                                                                 "the range the bundle's model represents)")
    age_epochs: int = Field(20, ge=1, description="translation runs: epochs of the brain-age regressor")
    count: int = Field(1000, gt=1, description="synthetic samples to evaluate")
    real_count: int = Field(1000, gt=1, description="real studies to compare with")
    augment: str | None = Field(None, description="an augmentation study's JSON result to include")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _layouts(self):
        for role in ("real", "train"):
            if (getattr(self, role) is None) != (getattr(self, f"{role}_layout") is None):
                raise ValueError(f"{role} and {role}_layout go together")
        if self.window is not None and not self.window[0] < self.window[1]:
            raise ValueError(f"window {list(self.window)} is not LOW < HIGH")
        return self


def _set_dotted(data: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def parse_overrides(pairs: list[str] | None, source: str) -> dict:
    """`key=value` pairs (dotted keys for nesting; values parsed as YAML scalars)."""
    overrides: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise BadInputError(source, f"override {pair!r} is not key=value")
        key, value = pair.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise BadInputError(source, f"override {pair!r}: not a valid YAML value: {yaml_problem(err)}") from err
        _set_dotted(overrides, key.strip(), parsed)
    return overrides


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def validate_config(model: type[Config], data: dict, source: str) -> Config:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(config)"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise BadInputError(source, f"{field}: {first['msg']}{more}") from err


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line, 1-based line and column first: PyYAML's own text spans several lines
    (it quotes the offending line), which the CLI's one-line errors would break apart."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is None or problem is None:  # a reader error: a character, not a place in the syntax
        return " ".join(str(err).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark:
        where += f" ({context} from line {context_mark.line + 1}, column {context_mark.column + 1})"
    return where


def load_config(model: type[Config], path: str | Path | None, overrides: list[str] | None = None,
                values: dict | None = None) -> Config:
    """Read YAML from `path` (optional), apply `key=value` overrides, then typed `values`, validate."""
    source = str(path) if path else "command line"
    data: dict = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as err:
            raise BadInputError(source, f"cannot read ({err.strerror})") from err
        except yaml.YAMLError as err:
            raise BadInputError(source, f"not valid YAML: {yaml_problem(err)}") from err
        if not isinstance(data, dict):
            raise BadInputError(source, "must be a mapping of settings")
    merged = _merge(_merge(data, parse_overrides(overrides, source)), values or {})
    return validate_config(model, merged, source)


BrainModality = Literal["ct", "mri", "pet"]
DEFAULT_BRAIN_COUNTS = {"ct": 300, "mri": 1000, "pet": 1000}


class ReportsDataConfig(JobConfig):
    """Unpaired training data (recipe medrat): the source of the report side when it is not the image
    source itself. phantom-cxr: `count` phantom reports (their films are never drawn); dataset: `path`
    in a layout with reports. Patients found in both sources are split between the sides
    (factory.data.unpaired)."""

    source: Literal["phantom-cxr", "dataset"] = "dataset"
    path: str | None = Field(None, description="dataset root (source: dataset)")
    layout: Literal["mimic-cxr", "iu-xray", "folder"] | None = None
    count: int = Field(5000, gt=0, description="phantom chest X-ray reports (source: phantom-cxr)")
    seed: int = Field(0, ge=0, description="phantom seed (source: phantom-cxr); another seed than the images' "
                                           "gives other patients")

    @model_validator(mode="after")
    def _dataset_needs_path(self):
        if self.source == "dataset" and not (self.path and self.layout):
            raise ValueError("source: dataset needs path and layout")
        return self


class TrainDataConfig(JobConfig):
    """Training data: a built-in phantom, or a real dataset in one of the adapters' layouts.

    phantom-cxr: `count` chest X-ray studies. phantom-brain: `counts` head phantoms per modality, one
    2-D axial slice each (DUIIT: a small CT set, larger MRI and PET sets; modalities are different
    patients). dataset: `path` in `layout`; the volumes layout gives one part per modality, 2-D axial
    slices (`slices_per_volume` from each 3-D volume). Chest X-ray data also gives the two sides of
    unpaired training (images of some patients, reports of others), the reports from `reports` when
    given. See factory.data.training."""

    source: Literal["phantom-cxr", "phantom-brain", "dataset"] = "phantom-cxr"
    path: str | None = Field(None, description="dataset root (source: dataset)")
    layout: Literal["mimic-cxr", "iu-xray", "chexpert", "nih", "folder", "volumes"] | None = None
    count: int = Field(5000, gt=0, description="phantom chest X-ray studies (source: phantom-cxr)")
    counts: dict[BrainModality, Annotated[int, Field(ge=0)]] | None = Field(
        None, description=f"phantom brain patients per modality (source: phantom-brain; default {DEFAULT_BRAIN_COUNTS})")
    slices_per_volume: int = Field(1, ge=1, description="axial slices taken from each 3-D volume (layout: volumes)")
    size: int = Field(64, ge=16, le=1024, description="image side the model sees")
    seed: int = Field(0, ge=0, description="phantom seed; also the seed of the unpaired split by patient")
    reports: ReportsDataConfig | None = Field(
        None, description="unpaired training (medrat): the report side's own source (default: this data's reports)")
    min_word_count: int = Field(6, ge=1, description="vocabulary keeps words seen this often (EMIXER: 6)")
    skip_bad: bool = Field(False, description="skip unreadable studies (counted in the cache) instead of stopping")

    @model_validator(mode="before")
    @classmethod
    def _default_brain_counts(cls, data):
        if isinstance(data, dict) and data.get("source") == "phantom-brain" and data.get("counts") is None:
            data = {**data, "counts": dict(DEFAULT_BRAIN_COUNTS)}
        return data

    @model_validator(mode="after")
    def _dataset_needs_path(self):
        if self.source == "dataset" and not (self.path and self.layout):
            raise ValueError("source: dataset needs path and layout")
        if self.counts is not None and self.source != "phantom-brain":
            raise ValueError("counts is for source: phantom-brain (phantom-cxr takes count)")
        if self.reports is not None and (self.source == "phantom-brain" or self.layout == "volumes"):
            raise ValueError("reports is for chest X-ray training data (phantom-cxr or a chest X-ray layout)")
        if self.source == "phantom-brain" and not 32 <= self.size <= 512:
            raise ValueError("source: phantom-brain needs 32 <= size <= 512 (the phantom's slice sizes)")
        return self


class TrainConfig(JobConfig):
    """`medsynth train` / jobs/train.py: a recipe trained by Ray Train workers, one DeepSpeed engine per
    network (or one DistributedDataParallel network with engine: ddp)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="run name; the same name resumes")
    storage_path: str = Field(description="where checkpoints and the data cache live (local path or s3://)")
    recipe: str = "emixer"
    model: dict = Field(default_factory=dict, description="the recipe's model config overrides")
    data: TrainDataConfig = TrainDataConfig()
    steps: int = Field(gt=0)
    batch_size: int = Field(16, gt=0, description="micro-batch per worker")
    workers: int = Field(2, gt=0)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    engine: Literal["deepspeed", "ddp"] = Field(
        "deepspeed", description="what wraps each network: a DeepSpeed engine, or torch DistributedDataParallel "
                                 "with a torch optimiser (the plain baseline; fp32, no ZeRO)")
    zero_stage: Literal[0, 1, 2] = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_clip: float | None = Field(None, gt=0)
    checkpoint_every: int = Field(100, gt=0)
    log_every: int = Field(10, gt=0, description="report rank 0's metrics to the progress bar and the run's "
                                                 "TensorBoard events every N steps (and at every checkpoint)")
    seed: int = Field(0, ge=0)
    max_failures: int = Field(2, ge=-1, description="worker-group restarts before the run fails (-1: no limit)")
    bundle_out: str | None = Field(None, description="export a bundle here at the end")
    start_from: str | None = Field(None, description="a bundle the recipe starts networks from before the first "
                                   "step (EMIXER: a chest X-ray classifier for F's encoder); the exported bundle records it")
    snapshot_every: int | None = Field(None, gt=0, description="also export a bundle every K steps, to "
                                                               "STORAGE_PATH/NAME/snapshots/step-NNNNNN")

    @model_validator(mode="after")
    def _precision_on_gpu(self):
        if self.precision != "fp32" and not self.use_gpu:
            raise ValueError(f"precision {self.precision} needs use_gpu: true (on CPU DeepSpeed runs fp32)")
        return self

    @model_validator(mode="after")
    def _ddp_is_plain(self):
        if self.engine == "ddp" and self.zero_stage != 0:
            raise ValueError(f"zero_stage {self.zero_stage} is DeepSpeed's; engine ddp needs zero_stage: 0")
        if self.engine == "ddp" and self.precision != "fp32":
            raise ValueError(f"engine ddp trains in fp32; precision {self.precision} needs engine: deepspeed")
        return self


class BenchConfig(JobConfig):
    """jobs/bench.py: one benchmark of `medsynth bench` with its own options."""

    # = factory.bench.cli.BENCHMARKS (tests/test_jobs.py checks)
    benchmark: Literal["produce", "cxr-phantom", "brain-age", "train", "duiit", "load", "faults"]
    args: tuple[str, ...] = Field((), description="the benchmark's options, as on the command line")

    @field_validator("args", mode="before")
    @classmethod
    def _as_strings(cls, value):  # YAML reads `--count, 50` as a string and an int
        return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else value
