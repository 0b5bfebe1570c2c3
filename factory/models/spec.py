"""The generator seam: each model declares itself once, as a `GeneratorSpec` named `SPEC` at the end
of its module, and factory.models.registry lists the modules (one line each).

A spec says everything the rest of the factory asks of a model, so that training, production and the
CLI never branch on model names:
- its config (`make_config`: defaults, overrides, validation) and networks (`build_networks`);
- its training recipe, named as "module:Class" and imported only by the trainer (models know nothing
  of training; the recipe knows the model);
- what it produces, as typed products: each product is the set of functions a producer calls
  (`PairSampling` for label -> image + report, `ImageSampling` for labelled images without reports,
  `Translation` for source image -> CT, `Explanation` for X-ray -> diagnosis, justification and
  counterfactual, `Captioning` for given image -> report); the produce
  layer maps each product type to its producer;
- how an untrained bundle of its shape is made (`untrained`), and which `medsynth bundle init`
  options that shape takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from factory.data.text.vocab import Vocabulary

Networks = Mapping[str, "nn.Module"]


@dataclass(frozen=True)
class PairSampling:
    """Product "pairs": labelled images with their reports, from labels and noise.

    `z_dim(config)`: noise dimensions per sample. `generate(nets, labels (B, L), z (B, z_dim))` ->
    (images (B, H, W) uint8, report token ids): a function of its inputs alone (eval mode, greedy
    words). `decode_reports(ids, vocabulary)` -> one report string per sample."""

    kind: ClassVar[str] = "pairs"
    z_dim: Callable[[Mapping[str, Any]], int]
    generate: Callable[[Networks, "torch.Tensor", "torch.Tensor"], "tuple[np.ndarray, np.ndarray]"]
    decode_reports: Callable[["np.ndarray", "Vocabulary"], list[str]]


@dataclass(frozen=True)
class Translation:
    """Product "translations": source-modality images into CT.

    `to_model_space(images, modality, config)`: adapter units -> the networks' input range.
    `translate(nets, images, source)`: (B, 1, H, W) source images -> CTs in the networks' range.
    `ct_to_hounsfield(images, config)`: that range -> Hounsfield units. The model config holds
    `sources` (the modalities it translates) and `source_range` (the input window)."""

    kind: ClassVar[str] = "translations"
    to_model_space: Callable[["torch.Tensor", str, Mapping[str, Any]], "torch.Tensor"]
    translate: Callable[[Networks, "torch.Tensor", str], "torch.Tensor"]
    ct_to_hounsfield: Callable[["torch.Tensor", Mapping[str, Any]], "torch.Tensor"]


@dataclass(frozen=True)
class ImageSampling:
    """Product "images": labelled images without reports.

    `z_dim(config)`: noise dimensions per sample. `generate(nets, labels (B, L) or None, z (B, z_dim))`
    -> images (B, H, W) uint8, a function of its inputs alone (eval mode). A label-conditioned model
    (`pseudo_label` None) gets the labels the run's label policy chose. An unconditional model gets
    None and its images are labelled afterwards by `pseudo_label(nets, images)` -> (labels (B, L) 0/1
    float32, confidence (B,) float32); samples whose confidence is below `threshold(config)` are
    dropped by the producer's quality gate and counted."""

    kind: ClassVar[str] = "images"
    z_dim: Callable[[Mapping[str, Any]], int]
    generate: Callable[[Networks, "torch.Tensor | None", "torch.Tensor"], "np.ndarray"]
    pseudo_label: Callable[[Networks, "np.ndarray"], "tuple[np.ndarray, np.ndarray]"] | None = None
    threshold: Callable[[Mapping[str, Any]], float] | None = None

    @property
    def conditional(self) -> bool:
        return self.pseudo_label is None


@dataclass
class Explained:
    """What `Explanation.explain` returns for B X-rays: the diagnosis probabilities (B, L) float32
    over the bundle's label names, the justification caption's word ids (B, T) int64, the nearest
    alternative diagnosis (B,) int64, whether its counterfactual reads as it (B,) bool, and the
    counterfactual X-ray (B, S, S) uint8."""

    probabilities: "np.ndarray"
    caption_ids: "np.ndarray"
    alternative: "np.ndarray"
    reached: "np.ndarray"
    counterfactual: "np.ndarray"


@dataclass(frozen=True)
class Explanation:
    """Product "explanations": a diagnosis for each X-ray, a caption that justifies it and the X-ray
    of the nearest alternative diagnosis.

    `explain(nets, images (B, H, W) uint8, config, seed)` -> `Explained`, each image's result a
    function of that image and the seed alone (eval mode). `decode_captions(ids, vocabulary)` -> one
    caption per image."""

    kind: ClassVar[str] = "explanations"
    explain: Callable[[Networks, "np.ndarray", Mapping[str, Any], int], Explained]
    decode_captions: Callable[["np.ndarray", "Vocabulary"], list[str]]


@dataclass(frozen=True)
class Captioning:
    """Product "captions": a report for each given image (an image generator's, or a dataset's film).

    `caption(nets, images (B, H, W) uint8)` -> report token ids (B, T) int64 over the bundle's
    vocabulary: a function of its inputs alone (eval mode, greedy words, no random numbers), so image
    i's report does not depend on the rest of its batch. Images of another size than the model's are
    resized to it first (bilinear, antialiased), so any image generator's output can be captioned.
    `decode_reports(ids, vocabulary)` -> one report string per image."""

    kind: ClassVar[str] = "captions"
    caption: Callable[[Networks, "np.ndarray"], "np.ndarray"]
    decode_reports: Callable[["np.ndarray", "Vocabulary"], list[str]]


@dataclass(frozen=True)
class ReportImaging:
    """Product "images-from-reports": an X-ray drawn for each report of a corpus.

    `noise_dim(config)`: noise dimensions per sample. `describe(reports, diagnoses (B,), vocabulary,
    config)` -> the token ids (B, T) int64 the generator reads for each report and its diagnosis (an
    index into the bundle's label names). `generate(nets, descriptions (B, T), noise (B, noise_dim),
    config)` -> X-rays (B, S, S) uint8, each a function of its own inputs alone (eval mode)."""

    kind: ClassVar[str] = "images-from-reports"
    noise_dim: Callable[[Mapping[str, Any]], int]
    describe: Callable[[Sequence[str], Sequence[int], "Vocabulary", Mapping[str, Any]], "np.ndarray"]
    generate: Callable[[Networks, "torch.Tensor", "torch.Tensor", Mapping[str, Any]], "np.ndarray"]


Product = PairSampling | Translation | ImageSampling | Explanation | Captioning | ReportImaging
P = TypeVar("P", PairSampling, Translation, ImageSampling, Explanation, Captioning, ReportImaging)


@dataclass(frozen=True)
class UntrainedShape:
    """What an untrained bundle holds beside its random weights: the config overrides that give the
    model its shape, the label names, the vocabulary (JSON) if it writes words, and a description
    appended to the bundle's training-data note."""

    overrides: dict[str, Any]
    label_names: list[str]
    vocabulary: dict[str, Any] | None = None
    description: str = ""


@dataclass(frozen=True)
class GeneratorSpec:
    """One model, declared once. `untrained(size=, seed=, **options)` gives an untrained bundle's
    shape; `untrained_options` names the further options it takes (e.g. "width", "sources")."""

    name: str
    summary: str
    make_config: Callable[[Mapping[str, Any] | None], dict[str, Any]]
    build_networks: Callable[[Mapping[str, Any]], dict[str, "nn.Module"]]
    untrained: Callable[..., UntrainedShape]
    untrained_options: tuple[str, ...] = ()
    recipe: str | None = None
    products: tuple[Product, ...] = ()

    def product(self, kind: type[P]) -> P | None:
        """The product of that type this model makes, or None."""
        return next((p for p in self.products if isinstance(p, kind)), None)

    @property
    def product_kinds(self) -> list[str]:
        return [p.kind for p in self.products]


def product_names(products: Sequence[Product]) -> str:
    return ", ".join(p.kind for p in products) or "nothing the factory produces"
