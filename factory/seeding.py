"""Seeding torch's global generators for a block, without disturbing the caller's random state, and
running a block on one torch thread."""

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


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Inside the block torch runs on one intra-op thread; afterwards on as many as before. On AVX-512
    CPUs a multi-threaded reduction rounds differently with the thread count (spectral norm's power
    iteration at construction, for one), so work whose bytes must follow from a seed alone runs here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
