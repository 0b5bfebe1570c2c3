"""MedRAT training step (Hirsch, Dawidowicz & Tal; docs/models.md), engine-agnostic.

Training data: the two sides of an unpaired split (factory.data.unpaired), parts "images" (films of
some patients with their labels, no reports) and "reports" (reports of other patients with their
labels, no films). A batch holds B of each, never an image with its own report.

One `train_step`: one forward of the one network (`medrat`) over both halves, then one backward and
one step of eq. 6:
    gamma_1 L_lang + gamma_2 L_contrast + gamma_3 L_class
- L_lang: teacher-forced cross-entropy of the decoder auto-encoding the reports from their global
  representation and their augmented local ones (`local_dropout`, `local_noise`);
- L_contrast: the multi-label supervised contrastive loss over the 2B global representations of
  images and reports together (eq. 4; positive pair = at least one shared positive label, No Finding
  included: medrat.positive_pairs), temperature `temperature`;
- L_class: the classification head's binary cross-entropy on both streams' global representations
  (eq. 5), the mean of the image and the report term (eq. 5 averages over the 2B examples).
The paper's extra augmented views for the contrastive loss (crops, blur and affine maps of images,
shuffled sentences of reports, 4N instead of 2N) are not implemented: the images and reports of the
batch are the only views.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from torch import nn

from factory.data.text.vocab import Vocabulary
from factory.data.unpaired import IMAGES, REPORTS, split_record
from factory.models import medrat
from factory.models.registry import build_networks
from factory.train.engines import Engine
from factory.train.recipes.common import ConstantAdamRecipe, TrainingVocabulary

if TYPE_CHECKING:
    from factory.config import TrainDataConfig
    from factory.data.cache import CachedDataset
    from factory.train.data import TrainingData


def present(labels: torch.Tensor) -> torch.Tensor:
    """0/1 labels: CheXpert's 1 only (uncertain, absent and unknown count as absent)."""
    return torch.nan_to_num(labels, nan=0.0).eq(1.0).float()


class MedratRecipe(TrainingVocabulary, ConstantAdamRecipe):
    name = "medrat"
    net_names: tuple[str, ...] = medrat.NET_NAMES
    progress_metrics = ("lang", "contrast", "class_image")  # what the training progress bar shows

    def __init__(self) -> None:
        self.config: dict[str, Any] | None = None

    def data_parts(self, overrides: Mapping[str, Any]) -> tuple[str, ...]:
        """The two sides of the unpaired split: images of some patients, reports of others."""
        return (IMAGES, REPORTS)

    def data_info(self, parts: Mapping[str, CachedDataset], data: TrainDataConfig) -> dict[str, Any]:
        """The vocabulary (words of the report side seen min_word_count times) and the split's proof
        (factory.data.unpaired.split_record); BadInputError if a patient is on both sides or the sides'
        labels differ."""
        images, reports = parts[IMAGES], parts[REPORTS]
        if tuple(images.label_names) != tuple(reports.label_names):
            raise ValueError(f"the image side's labels {list(images.label_names)} differ from the report "
                             f"side's {list(reports.label_names)}")
        texts = [str(r) for r, has in zip(reports.reports, reports.has_report) if has]
        record = split_record([str(p) for p in images.patient_ids], [str(p) for p in reports.patient_ids],
                              [str(s) for s in images.study_ids], [str(s) for s in reports.study_ids])
        return {"vocabulary": Vocabulary.build(texts, min_count=data.min_word_count).to_json(), "unpaired": record}

    def model_config(self, overrides: Mapping[str, Any], data: TrainingData) -> dict[str, Any]:
        """The full model config for this vocabulary, the labels and the image side's image size."""
        part = data.parts[IMAGES]
        return medrat.make_config(overrides, vocab_size=len(self._vocabulary(data)), num_labels=len(part.label_names),
                                  image_size=int(part.images.shape[-1]))

    def build(self, model_config: Mapping[str, Any], seed: int | None = None) -> dict[str, nn.Module]:
        self.config = medrat.make_config(model_config)
        return build_networks(self.name, self.config, seed)

    def batch(self, data: TrainingData, indices: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Images (B, 1, H, W) in [-1, 1] with their labels, and other studies' reports as token ids
        (B', max_words) with theirs (CheXpert values, NaN where not given)."""
        images, reports = data.parts[IMAGES], data.parts[REPORTS]
        image_index, report_index = indices[IMAGES], indices[REPORTS]
        return make_batch(images.images[image_index] * 2 - 1, images.labels[image_index],
                          [reports.reports[i] for i in report_index], reports.labels[report_index],
                          self._vocabulary(data), self._config())

    # optimizer_config, learning_rates, state_dict: ConstantAdamRecipe's (Adam at the config's `lr`; the
    # paper gives no schedule; no state between steps).

    def train_step(self, engines: Mapping[str, Engine], batch: Mapping[str, torch.Tensor], step: int,
                   generator: torch.Generator) -> dict[str, float]:
        """One step of eq. 6 (module docstring); `step` is part of the protocol (no schedule here)."""
        config = self._config()
        model = engines[medrat.NET_NAME]
        first = next(iter(model.parameters()))
        images = batch["image"].to(device=first.device, dtype=first.dtype)
        reports = batch["report"].to(device=first.device, dtype=torch.long)
        image_labels = batch["image_labels"].to(first.device)
        report_labels = batch["report_labels"].to(first.device)

        out = model(images, reports, generator)
        lang = medrat.language_loss(out["word_logits"], reports)
        contrast = medrat.supcon_loss(torch.cat([out["image_global"], out["report_global"]]),
                                      torch.cat([present(image_labels), present(report_labels)]), config["temperature"])
        class_image = medrat.label_loss(out["image_logits"], image_labels)
        class_report = medrat.label_loss(out["report_logits"], report_labels)
        model.backward(config["lang_weight"] * lang + config["contrast_weight"] * contrast
                       + config["class_weight"] * (class_image + class_report) / 2)
        model.step()
        losses = {"lang": lang, "contrast": contrast, "class_image": class_image, "class_report": class_report}
        return {key: float(value.detach()) for key, value in losses.items()}

    def export_metadata(self, data: TrainingData) -> dict[str, Any]:
        """Label names, the vocabulary and the unpaired split's proof (both sides' patient hashes)."""
        return {"label_names": list(data.parts[IMAGES].label_names), "vocabulary": data.info["vocabulary"],
                "training_data": {"unpaired": data.info["unpaired"]}}


def make_batch(images: torch.Tensor, image_labels: torch.Tensor, reports: list[str], report_labels: torch.Tensor,
               vocabulary: Vocabulary, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A train_step batch: images (B, 1, H, W) in [-1, 1] and their labels; report texts (of other
    studies) encoded as <bos> words <eos> <pad>... (max_words ids) and their labels."""
    encoded = np.array([vocabulary.encode(text, length=config["max_words"]) for text in reports], dtype=np.int64)
    return {"image": images, "image_labels": image_labels.float(), "report": torch.from_numpy(encoded),
            "report_labels": report_labels.float()}
