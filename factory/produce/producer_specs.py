"""Typed producer specs: what the driver hands to every actor and echoes into the manifest.

Each spec is a validated pydantic model with its own `build(seed)`, which the actor calls once to get
its producer (loading a bundle there). Its JSON form (`echo()`) is what a run's identity hashes and
its manifest shows, unchanged since producers were plain dicts, so runs made before resume as the
same runs; `parse_producer` reads one back from a manifest. A bundle's producer is chosen by the
product its model's spec declares (factory.models.spec), never by the model's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

if TYPE_CHECKING:
    from factory.produce.producers import Producer


class _ProducerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_kind: ClassVar[str]

    def echo(self) -> dict[str, Any]:
        """The JSON the manifest shows and the run id hashes."""
        return self.model_dump(mode="json")

    def build(self, seed: int) -> Producer:
        raise NotImplementedError


class PhantomPairs(_ProducerSpec):
    """Phantom chest X-ray studies with their reports (no bundle): demo, tests, capacity work."""

    sample_kind: ClassVar[str] = "pair"
    type: Literal["phantom-cxr"] = "phantom-cxr"
    size: int = Field(128, ge=16, le=1024)

    def build(self, seed: int) -> Producer:
        from factory.produce.producers import PhantomPairProducer

        return PhantomPairProducer(seed, size=self.size)


class BundlePairs(_ProducerSpec):
    """Image/report pairs from a bundle whose model makes pairs (factory.models.spec.PairSampling)."""

    sample_kind: ClassVar[str] = "pair"
    type: Literal["bundle-pairs"] = "bundle-pairs"
    bundle: str
    bundle_sha256: str | None = Field(None, description="the bundle the run was planned with (its identity)")
    labels: str | dict[str, int] = Field("balanced", description="label policy: balanced, prior or counts")
    count: int = Field(gt=0)

    def build(self, seed: int) -> Producer:
        from factory.produce.producers import BundlePairProducer

        return BundlePairProducer(seed, self.bundle, self.labels, self.count, self.bundle_sha256)


class BundleImages(_ProducerSpec):
    """Labelled images without reports from a bundle whose model makes them
    (factory.models.spec.ImageSampling). A label-conditioned model takes a label policy and no
    threshold; an unconditional one no labels (its classifier labels the images) and the pseudo-label
    confidence threshold below which samples are dropped."""

    sample_kind: ClassVar[str] = "image"
    type: Literal["bundle-images"] = "bundle-images"
    bundle: str
    bundle_sha256: str | None = Field(None, description="the bundle the run was planned with (its identity)")
    labels: str | dict[str, int] | None = Field(None, description="label policy of a conditional model: balanced, "
                                                                  "prior or counts")
    threshold: float | None = Field(None, ge=0, le=1, description="unconditional model: least pseudo-label "
                                                                  "confidence a kept sample has")
    count: int = Field(gt=0)

    @model_validator(mode="after")
    def _labels_or_threshold(self):
        if (self.labels is None) == (self.threshold is None):
            raise ValueError("give labels (a conditional model) or threshold (an unconditional one), not both")
        return self

    def build(self, seed: int) -> Producer:
        from factory.produce.producers import BundleImageProducer

        return BundleImageProducer(seed, self.bundle, self.labels, self.count, self.threshold, self.bundle_sha256)


class CaptionedImages(BundleImages):
    """Image/report pairs from two bundles: labelled images of an image-only bundle (as BundleImages),
    each with the report a captioning bundle (factory.models.spec.Captioning) writes for it."""

    sample_kind: ClassVar[str] = "pair"
    type: Literal["bundle-captioned-images"] = "bundle-captioned-images"  # type: ignore[assignment]
    reports: str
    reports_sha256: str

    def build(self, seed: int) -> Producer:
        from factory.produce.producers import CaptionedImageProducer

        return CaptionedImageProducer(seed, self.bundle, self.labels, self.count, self.threshold, self.reports,
                                      self.reports_sha256, self.bundle_sha256)


class _DatasetStudies(_ProducerSpec):
    """A bundle applied to a dataset's real chest X-rays: sample n is study n of the dataset's index (the
    index's sha256 joins the run's identity), read at `size`."""

    bundle: str
    bundle_sha256: str
    source: str
    layout: str
    size: int = Field(ge=16)
    dataset_sha256: str
    studies: int = Field(gt=0)


class DatasetCaptions(_DatasetStudies):
    """A dataset's real chest X-rays, each with the report a captioning bundle writes for it."""

    sample_kind: ClassVar[str] = "caption"
    type: Literal["dataset-captions"] = "dataset-captions"

    def build(self, seed: int) -> Producer:
        from factory.produce.producers import DatasetCaptionProducer

        return DatasetCaptionProducer(self.bundle, self.bundle_sha256, self.source, self.layout, self.size,
                                      self.dataset_sha256)


class DatasetExplanations(_DatasetStudies):
    """A dataset's real chest X-rays, each with the explanation a bundle whose model explains makes for it
    (factory.models.spec.Explanation): diagnosis, justification caption and the counterfactual X-ray of
    the nearest alternative diagnosis. Sample n is study n of the dataset's index (the index's sha256
    joins the run's identity), read at the bundle's image size."""

    sample_kind: ClassVar[str] = "explanation"
    type: Literal["dataset-explanations"] = "dataset-explanations"

    def build(self, seed: int) -> Producer:
        from factory.produce.producers import DatasetExplanationProducer

        return DatasetExplanationProducer(seed, self.bundle, self.bundle_sha256, self.source, self.layout, self.size,
                                          self.dataset_sha256)


class BundleTranslation(_ProducerSpec):
    """A source dataset's slices translated into CT by a bundle whose model translates
    (factory.models.spec.Translation), along the run's slice plan."""

    sample_kind: ClassVar[str] = "translation"
    type: Literal["bundle-translation"] = "bundle-translation"
    bundle: str
    bundle_sha256: str
    source: str
    modality: Literal["mri", "pet"] | None = None
    image_size: int = Field(gt=0)
    plan_sha256: str
    studies: int = Field(ge=0)
    volumes: int = Field(ge=0)
    # The whole plan travels to the actors; the manifest shows its sha256 and counts only.
    plan: dict[str, Any] | None = Field(None, exclude=True)

    def build(self, seed: int) -> Producer:
        from factory.errors import FactoryError
        from factory.produce.producers import TranslationProducer

        if self.plan is None:
            raise FactoryError(f"translation of {self.source}: the producer was handed no slice plan")
        return TranslationProducer(self.bundle, self.bundle_sha256, self.plan)


class ReportImages(_ProducerSpec):
    """Image/report pairs from a report corpus: a bundle whose model draws X-rays from reports
    (factory.models.spec.ReportImaging) makes one for report n of the corpus, in its adapter's order."""

    sample_kind: ClassVar[str] = "pair"
    type: Literal["report-images"] = "report-images"
    bundle: str
    bundle_sha256: str
    captions: str = Field(description="the report corpus's root")
    layout: str
    corpus_sha256: str = Field(description="sha256 of the corpus's index (factory.data.adapters.cxr) when planned")
    reports: int = Field(ge=0, description="reports in the corpus when planned")

    def build(self, seed: int) -> Producer:
        from factory.produce.producers import ReportImageProducer

        return ReportImageProducer(seed, self.bundle, self.bundle_sha256, self.captions, self.layout,
                                   self.corpus_sha256)


ProducerSpec = Annotated[Union[PhantomPairs, BundlePairs, BundleImages, CaptionedImages, DatasetCaptions,
                               DatasetExplanations, BundleTranslation, ReportImages], Field(discriminator="type")]
_ADAPTER: TypeAdapter[ProducerSpec] = TypeAdapter(ProducerSpec)


def parse_producer(data: dict[str, Any]) -> ProducerSpec:
    """A producer spec from its JSON (a manifest's `config.producer`); pydantic's ValidationError if invalid."""
    return _ADAPTER.validate_python(data)
