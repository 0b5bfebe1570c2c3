"""Seeding torch's global generators for a block, without disturbing the caller's random state."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def global_rng_seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Inside the block torch's global generators start from `seed`; afterwards the CPU generator
    (and `device`'s, when it is a CUDA device) are as they were. Layer initialisers, dropout and some
    library code (torchmetrics' KID subsets) draw from the global generators, not from a passed one."""
    device = torch.device(device) if device is not None else None
    with torch.random.fork_rng(devices=[device] if device is not None and device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
