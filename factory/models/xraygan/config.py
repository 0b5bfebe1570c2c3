"""The config checks both XRAY-GAN models share: merging overrides into the defaults, the architecture
numbers, and the training settings the recipes read (`lr` per network, one `betas`)."""

from __future__ import annotations

from typing import Any, Callable, Mapping


def check_image_size(size: Any) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 16 or size & (size - 1):
        raise ValueError(f"image_size must be a power of two >= 16, not {size!r}")


def check_positive_ints(config: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 1:
            raise ValueError(f"{key} must be a positive integer, not {config[key]!r}")


def checked_config(model: str, defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None,
                   kwargs: Mapping[str, Any], positive_ints: tuple[str, ...], net_names: tuple[str, ...],
                   check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """`defaults` updated by `overrides` and then `kwargs`, checked: known keys only, image_size,
    `positive_ints`, the model's own `check` (if any), then a learning rate for each of `net_names`.

    Raises ValueError on an unknown key or an impossible value."""
    config = {**defaults, **dict(overrides or {}), **kwargs}
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {model} config keys: {unknown}")
    check_image_size(config["image_size"])
    check_positive_ints(config, positive_ints)
    if check is not None:
        check(config)
    if set(config["lr"]) != set(net_names):
        raise ValueError(f"lr must give a learning rate for each of {list(net_names)}")
    config["betas"] = list(config["betas"])
    return config


def z_dim(config: Mapping[str, Any]) -> int:
    return config["z_dim"]
