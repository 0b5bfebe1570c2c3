"""Justify's networks by name, what explanation and production call, and `SPEC` (model `justify`).

Networks: AE (the ARAE's text encoder and decoder), Gz and Cz (its code generator and WGAN critic),
G1, D1, G2, D2 (the two StackGAN stages), I (the inverse mapping). The recipe trains them in stages
(factory.train.recipes.justify).

Inference (§3.3-3.4), on 8-bit X-rays of any square size (resized to stage1_size for I):
- `diagnose(nets, images)`: p(d | r) over the diagnoses, r = I(x).
- `justify_caption(nets, images)`: the diagnosis and the caption decoded from r's code.
- `counterfactual(nets, images, target=None, config=None, seed=0)`: M's r' for the nearest
  alternative diagnosis (the most likely other trained one, or `target`) and the X-ray G(r') at
  image_size (`draw`: G2(G1(r'), r'), or G1's upsampled when the schedule never trains stage 2).
- `explain(nets, images, config, seed)`: all three, the model's product (spec.Explanation).
- `generate_from_captions(nets, descriptions, noise, config)`: the text-to-image generator on its own, with
  `describe_reports` what production calls for reports (spec.ReportImaging).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from factory.data.labels import CXR_LABELS
from factory.data.text.vocab import Vocabulary
from factory.models.justify.arae import (CodeCritic, CodeGenerator, TextAutoencoder, caption_vocabulary,
                                         encode_descriptions)
from factory.models.justify.config import make_config
from factory.models.justify.counterfactual import counterfactual_search
from factory.models.justify.inverse import InverseMapping
from factory.models.justify.stackgan import Discriminator, Stage1Generator, Stage2Generator
from factory.models.spec import Explained, Explanation, GeneratorSpec, ReportImaging, UntrainedShape


def build_networks(config: Mapping[str, Any]) -> dict[str, nn.Module]:
    config = make_config(config)
    return {"AE": TextAutoencoder(config), "Gz": CodeGenerator(config), "Cz": CodeCritic(config),
            "G1": Stage1Generator(config), "D1": Discriminator(config, config["stage1_size"], config["d1_width"]),
            "G2": Stage2Generator(config), "D2": Discriminator(config, config["image_size"], config["d2_width"]),
            "I": InverseMapping(config)}


def code_dim(nets: Mapping[str, nn.Module]) -> int:
    return nets["AE"].encoder.hidden_size


def stage1_size(nets: Mapping[str, nn.Module]) -> int:
    """G1's output size: 4 x 2^(its upsampling blocks)."""
    return 4 * 2 ** sum(isinstance(m, nn.Upsample) for m in nets["G1"].up)


def to_model_images(images: np.ndarray | torch.Tensor, size: int, like: torch.Tensor) -> torch.Tensor:
    """8-bit X-rays (B, H, W) -> (B, 1, size, size) in [-1, 1] on `like`'s device and dtype (area
    resampling when the size differs)."""
    x = torch.as_tensor(np.asarray(images)).to(device=like.device, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"images must be (B, H, W) 8-bit arrays, not of shape {tuple(x.shape)}")
    x = x[:, None] / 127.5 - 1
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.to(like.dtype)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 1, H, W) in [-1, 1] -> (B, H, W) uint8."""
    return ((images[:, 0].float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def _eval(nets: Mapping[str, nn.Module], *names: str) -> torch.Tensor:
    for name in names:
        nets[name].eval()
    return next(nets["I"].parameters())


def representations(nets: Mapping[str, nn.Module],
                    images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r = I(x) for 8-bit X-rays, and the stage-1-sized images I read."""
    first = _eval(nets, "I")
    x = to_model_images(images, stage1_size(nets), first)
    with torch.inference_mode():
        return nets["I"](x), x


def diagnose(nets: Mapping[str, nn.Module], images: np.ndarray | torch.Tensor) -> np.ndarray:
    """p(d | I(x)) for 8-bit X-rays (B, H, W): (B, num_labels) float32, rows summing to 1."""
    _eval(nets, "AE")
    r, _ = representations(nets, images)
    with torch.inference_mode():
        logits = nets["AE"].diagnosis_logits(r[:, : code_dim(nets)])
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def justify_caption(nets: Mapping[str, nn.Module], images: np.ndarray | torch.Tensor,
                    max_words: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """The diagnosis (B,) int64 (the most likely) and its justification, caption word ids
    (B, max_words + 1) int64 decoded greedily from I(x)'s code conditional on that diagnosis
    (`decode_captions` turns them into text)."""
    _eval(nets, "AE")
    r, _ = representations(nets, images)
    code = r[:, : code_dim(nets)]
    with torch.inference_mode():
        diagnosis = nets["AE"].diagnosis_logits(code).argmax(dim=1)
        ids = nets["AE"].decode(code, diagnosis, max_words)
    return diagnosis.cpu().numpy(), ids.cpu().numpy()


def decode_captions(ids: np.ndarray, vocabulary: Vocabulary) -> list[str]:
    return [vocabulary.decode(row) for row in np.asarray(ids)]


@dataclass
class Counterfactual:
    """M's result per image: the diagnosis of x and its probabilities, the alternative d', whether
    r' decodes to d', r', and the X-ray G(r') (8-bit, image_size)."""

    diagnosis: np.ndarray  # (B,) int64
    probabilities: np.ndarray  # (B, num_labels) float32
    target: np.ndarray  # (B,) int64
    success: np.ndarray  # (B,) bool
    representation: np.ndarray  # (B, r_dim) float32
    images: np.ndarray  # (B, image_size, image_size) uint8


def nearest_alternative(probabilities: torch.Tensor, alternatives: Sequence[int] | None = None) -> torch.Tensor:
    """The most likely diagnosis other than the most likely one (B,), among `alternatives` (label
    indices; None: every diagnosis)."""
    candidates = probabilities.float().clone()
    if alternatives is not None:
        allowed = torch.zeros(candidates.shape[1], dtype=torch.bool, device=candidates.device)
        allowed[list(alternatives)] = True
        candidates[:, ~allowed] = -1.0
    candidates.scatter_(1, probabilities.argmax(dim=1, keepdim=True), -2.0)
    return candidates.argmax(dim=1)


def counterfactual(nets: Mapping[str, nn.Module], images: np.ndarray | torch.Tensor,
                   target: np.ndarray | torch.Tensor | None = None, *, config: Mapping[str, Any] | None = None,
                   seed: int = 0) -> Counterfactual:
    """M (§3.4) for 8-bit X-rays (B, H, W): r' for `target` (B,) diagnoses, or the nearest
    alternative to each image's diagnosis among the config's `alternatives` when None, and
    G(r') = G2(G1(r'), r') (`draw`). `config`: the model config, for M's settings (m_lr, m_steps, m_max_iter,
    m_restarts, m_restart_scale, alternatives; the paper's when None). Each image's result
    is a function of (image, target, seed) alone; the networks are not changed."""
    config = make_config(config)
    AE, G1 = nets["AE"], nets["G1"]
    _eval(nets, "AE", "G1", "G2")
    r, x = representations(nets, images)
    v = code_dim(nets)
    with torch.inference_mode():
        probs = torch.softmax(AE.diagnosis_logits(r[:, :v]).float(), dim=1)
    diagnosis = probs.argmax(dim=1)
    if target is None:
        wanted = nearest_alternative(probs, config["alternatives"])
    else:
        wanted = torch.as_tensor(np.asarray(target), dtype=torch.long, device=r.device)
        if wanted.shape != diagnosis.shape or bool(((wanted < 0) | (wanted >= probs.shape[1])).any()):
            raise ValueError(f"target must hold one diagnosis in 0..{probs.shape[1] - 1} per image")
    frozen = [(p, p.requires_grad) for net in (AE, G1) for p in net.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        search = counterfactual_search(lambda rr: AE.diagnosis_logits(rr[:, :v]), lambda rr: G1(rr)[0],
                                       r.clone(), x.clone(), wanted, lr=config["m_lr"], steps=config["m_steps"],
                                       max_iter=config["m_max_iter"], restarts=config["m_restarts"],
                                       restart_scale=config["m_restart_scale"], seed=seed)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    with torch.inference_mode():
        drawn = draw(nets, search.representation, config)
    return Counterfactual(diagnosis.cpu().numpy(), probs.cpu().numpy(), wanted.cpu().numpy(),
                          search.success.cpu().numpy(), search.representation.float().cpu().numpy(), to_uint8(drawn))


def draw(nets: Mapping[str, nn.Module], r: torch.Tensor, config: Mapping[str, Any]) -> torch.Tensor:
    """X-rays for representations r (B, r_dim) at image_size, in [-1, 1]: G2(G1(r), r), or, when the
    config's schedule never trains stage 2, G1(r) upsampled (bilinear): an untrained G2 draws a flat
    grey film."""
    low, _ = nets["G1"](r)
    if config["schedule"]["stage2"] == 0:
        return F.interpolate(low, size=config["image_size"], mode="bilinear", align_corners=False)
    return nets["G2"](low, r)[0]


def explain(nets: Mapping[str, nn.Module], images: np.ndarray, config: Mapping[str, Any], seed: int = 0) -> Explained:
    """The product: for 8-bit X-rays (B, H, W), the diagnosis probabilities, the justification
    caption, the nearest alternative diagnosis and its counterfactual X-ray (M)."""
    config = make_config(config)
    _, ids = justify_caption(nets, images, config["caption_words"])
    found = counterfactual(nets, images, config=config, seed=seed)
    return Explained(found.probabilities, ids, found.target, found.success, found.images)


def generate_from_captions(nets: Mapping[str, nn.Module], descriptions: torch.Tensor,
                           noise: torch.Tensor, config: Mapping[str, Any]) -> np.ndarray:
    """The text-to-image generator: descriptions (B, T) as `arae.encode_descriptions` writes them and
    noise (B, noise_dim) -> X-rays (B, image_size, image_size) uint8 (`draw`); eval mode, per sample."""
    config = make_config(config)
    first = _eval(nets, "AE", "G1", "G2")
    with torch.inference_mode():
        code = nets["AE"].encode(descriptions.to(first.device))
        r = torch.cat([code, noise.to(device=first.device, dtype=code.dtype)], dim=1)
        return to_uint8(draw(nets, r, config))


def describe_reports(reports: Sequence[str], diagnoses: Sequence[int], vocabulary: Vocabulary,
                     config: Mapping[str, Any]) -> np.ndarray:
    """What the text-to-image generator reads for each report: its first description (the diagnosis,
    then the first caption's words; the diagnosis alone when the report has no usable caption)."""
    descriptions, _ = encode_descriptions(reports, diagnoses, vocabulary, make_config(config))
    return descriptions[:, 0]


# Enough phantom reports for every caption word of the report grammar to reach the min count of 6.
UNTRAINED_REPORTS = 2000


def untrained_shape(size: int, seed: int, width: int | None = None) -> UntrainedShape:
    """An untrained justify model diagnoses the chest X-ray labels; its caption vocabulary comes from
    phantom reports; stage 1 works at half the image size (at most 64), so the size must be >= 32."""
    from factory.data.phantoms.cxr import phantom_reports

    config = make_config({"image_size": size, "stage1_size": min(64, size // 2)})
    vocabulary = caption_vocabulary(list(phantom_reports(seed, UNTRAINED_REPORTS)), config, min_count=6)
    overrides: dict[str, Any] = {"image_size": config["image_size"], "stage1_size": config["stage1_size"],
                                 "vocab_size": len(vocabulary), "num_labels": len(CXR_LABELS)}
    if width is not None:
        overrides.update(g1_width=width, d1_width=width, g2_width=width, d2_width=width, i_width=width)
    return UntrainedShape(overrides, list(CXR_LABELS), vocabulary.to_json(),
                          f"; vocabulary from {UNTRAINED_REPORTS} phantom chest X-ray reports")


SPEC = GeneratorSpec(
    name="justify",
    summary="chest X-ray -> diagnosis, justifying caption and nearest-alternative X-ray; caption -> X-ray",
    make_config=make_config,
    build_networks=build_networks,
    untrained=untrained_shape,
    untrained_options=("width",),
    recipe="factory.train.recipes.justify:JustifyRecipe",
    products=(Explanation(explain=explain, decode_captions=decode_captions),
              ReportImaging(noise_dim=lambda config: make_config(config)["noise_dim"], describe=describe_reports,
                            generate=generate_from_captions)),
)
