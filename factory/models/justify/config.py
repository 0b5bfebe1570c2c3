"""Justify's model config: architecture (the paper's sizes as defaults), the training schedule in
stages, and the settings of M. The whole dict is stored in bundles."""

from __future__ import annotations

from typing import Any, Mapping

from factory.data.labels import CXR_LABELS

STAGES = ("arae", "stage1", "stage2", "inverse")  # in training order (the paper's figure 1)
NET_NAMES = ("AE", "Gz", "Cz", "G1", "D1", "G2", "D2", "I")
STAGE_NETS = {"arae": ("AE", "Gz", "Cz"), "stage1": ("G1", "D1"), "stage2": ("G2", "D2"), "inverse": ("I",)}

DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 128,  # stage 2's output; the paper's 256 is a value of this key
    "stage1_size": 64,  # stage 1's output, which I reads and M compares (§3.3)
    "channels": 1,
    "num_labels": len(CXR_LABELS),  # the diagnoses: a study's diagnosis is its primary label
    "vocab_size": 64,  # set from the training vocabulary
    # Captions (§4.1): report sentences packed in order into captions of at most `caption_words`
    # tokens, those shorter than `min_caption_words` dropped, at most `captions_per_study` kept.
    "caption_words": 15,
    "min_caption_words": 5,
    "captions_per_study": 4,
    # ARAE (§3.1, Zhao et al.): single-layer LSTM encoder and decoder, code v = 300 at the encoder's
    # hidden layer; code generator and critic are three-layer MLPs; the code generator's noise.
    "code_dim": 300,
    "word_embedding": 300,
    "arae_noise": 100,
    "arae_hidden": 300,
    "code_noise": 0.1,  # ARAE's Gaussian noise on codes during autoencoder training
    "critic_steps": 5,  # ARAE's critic iterations per autoencoder iteration
    "gradient_penalty": 10.0,  # WGAN-GP's lambda (Gulrajani et al.), in place of ARAE's clipping
    "encoder_adversarial": 0.01,  # ARAE's weight of the critic's gradient into the encoder
    # Representation r = [code, noise] (§3.1: noise 100).
    "noise_dim": 100,
    # StackGAN (appendix A): stage-1 generator 1536 channels at 4x4 (16 x g1_width), discriminators
    # from d_width; stage 2 encodes the 64-px image to 16x16 at 8 x g2_width channels.
    "g1_width": 96,
    "d1_width": 96,
    "g2_width": 96,
    "d2_width": 96,
    "residual_blocks": 2,  # StackGAN-v1's stage-2 residual blocks
    "conditioning_augmentation": False,  # the paper removes StackGAN's CA (§3.2); True restores it
    "ca_dim": 128,  # StackGAN's conditioning dimension when CA is on
    "ca_kl_weight": 1.0,  # StackGAN's lambda for the CA's KL term
    "wrong_weight": 0.5,  # StackGAN's matching-aware discriminator: (wrong + fake) / 2
    # Inverse mapping (appendix B): convolutions with LeakyReLU + dropout 0.1, then fully connected
    # layers with ReLU + dropout 0.5.
    "i_width": 64,
    "i_hidden": 1024,
    # Training: Adam, betas 0.5 / 0.999 (§3.1, §3.3; StackGAN's); steps per stage in order.
    "lr": {"AE": 1e-3, "Gz": 5e-5, "Cz": 1e-5, "G1": 2e-4, "D1": 2e-4, "G2": 2e-4, "D2": 2e-4, "I": 2e-4},
    "betas": [0.5, 0.999],
    "schedule": {"arae": 3000, "stage1": 3000, "stage2": 3000, "inverse": 2000},
    # M (§3.4): L-BFGS, learning rate 1, 100 steps of at most 20 iterations; restarts from r + z with
    # z ~ N(0, restart_scale^2) when the search ends on the same diagnosis.
    "m_lr": 1.0,
    "m_steps": 100,
    "m_max_iter": 20,
    "m_restarts": 2,
    "m_restart_scale": 0.1,
    # The diagnoses M may take as the nearest alternative (label indices): the recipe sets those the
    # training data has, since the decoder's probability of a diagnosis it never saw means nothing.
    # None: every diagnosis.
    "alternatives": None,
}

_POSITIVE_INTS = ("stage1_size", "channels", "num_labels", "vocab_size", "caption_words", "min_caption_words",
                  "captions_per_study", "code_dim", "word_embedding", "arae_noise", "arae_hidden", "critic_steps",
                  "noise_dim", "g1_width", "d1_width", "g2_width", "d2_width", "ca_dim", "i_width", "i_hidden",
                  "m_steps", "m_max_iter")
_NON_NEGATIVE = ("code_noise", "gradient_penalty", "encoder_adversarial", "ca_kl_weight", "wrong_weight",
                 "m_restart_scale")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def make_config(overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """The full model config: defaults updated by `overrides` and keyword arguments, checked.

    Raises ValueError on an unknown key or an impossible value."""
    config = {**DEFAULT_CONFIG, **dict(overrides or {}), **kwargs}
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown justify config keys: {unknown}")
    for key in ("image_size", "stage1_size"):
        size = config[key]
        if not _is_int(size) or size < 16 or size & (size - 1):
            raise ValueError(f"{key} must be a power of two >= 16, not {size!r}")
    if config["stage1_size"] >= config["image_size"]:
        raise ValueError(f"stage1_size ({config['stage1_size']}) must be smaller than image_size "
                         f"({config['image_size']})")
    for key in _POSITIVE_INTS:
        if not _is_int(config[key]) or config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, not {config[key]!r}")
    for key in _NON_NEGATIVE:
        if not _is_number(config[key]) or config[key] < 0:
            raise ValueError(f"{key} must be a number >= 0, not {config[key]!r}")
    if not _is_int(config["residual_blocks"]) or config["residual_blocks"] < 0:
        raise ValueError(f"residual_blocks must be an integer >= 0, not {config['residual_blocks']!r}")
    if not _is_int(config["m_restarts"]) or config["m_restarts"] < 0:
        raise ValueError(f"m_restarts must be an integer >= 0, not {config['m_restarts']!r}")
    if not _is_number(config["m_lr"]) or config["m_lr"] <= 0:
        raise ValueError(f"m_lr must be a positive number, not {config['m_lr']!r}")
    if config["num_labels"] < 2:
        raise ValueError("num_labels must be at least 2: M looks for another diagnosis")
    alternatives = config["alternatives"]
    if alternatives is not None:
        if (not isinstance(alternatives, (list, tuple)) or len(set(alternatives)) != len(alternatives)
                or len(alternatives) < 2
                or not all(_is_int(d) and 0 <= d < config["num_labels"] for d in alternatives)):
            raise ValueError(f"alternatives must be null or at least 2 distinct diagnoses in "
                             f"0..{config['num_labels'] - 1}, not {alternatives!r}")
        config["alternatives"] = sorted(alternatives)
    if config["min_caption_words"] > config["caption_words"]:
        raise ValueError("min_caption_words must not exceed caption_words")
    if not isinstance(config["conditioning_augmentation"], bool):
        raise ValueError("conditioning_augmentation must be true or false")
    if not isinstance(config["lr"], Mapping) or set(config["lr"]) != set(NET_NAMES):
        raise ValueError(f"lr must give a learning rate for each of {list(NET_NAMES)}")
    schedule = config["schedule"]
    if not isinstance(schedule, Mapping) or set(schedule) != set(STAGES):
        raise ValueError(f"schedule must give the steps of each stage: {list(STAGES)} (trained in that order)")
    if not all(_is_int(n) and n >= 0 for n in schedule.values()):
        raise ValueError(f"schedule steps must be integers >= 0, not {dict(schedule)!r}")
    config["lr"] = {name: float(config["lr"][name]) for name in NET_NAMES}
    config["schedule"] = {stage: int(schedule[stage]) for stage in STAGES}
    config["betas"] = [float(b) for b in config["betas"]]
    return config


def representation_dim(config: Mapping[str, Any]) -> int:
    """r = [code, noise] (§3.1: 300 + 100)."""
    return config["code_dim"] + config["noise_dim"]


def stage_at(schedule: Mapping[str, int], step: int) -> tuple[str, int]:
    """The stage a training step belongs to and the step's index within it. Raises ValueError past
    the schedule's end."""
    first = 0
    for stage in STAGES:
        if step < first + schedule[stage]:
            return stage, step - first
        first += schedule[stage]
    raise ValueError(f"step {step} lies past the schedule's {first} steps ({dict(schedule)})")
