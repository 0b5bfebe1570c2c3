"""Interleave real and synthetic samples with a given synthetic share, reproducibly.

webdataset.RandomMix does the same draw but from the global `random` module, so it cannot be
seeded per pipeline (and seeding the global generator would reorder every other user of it); the
draw below is the same Bernoulli choice from a generator seeded by (seed, epoch, rank, worker).
Each source is split across ranks and workers by itself (a run and `study_samples` both are), so
mixing inside each DataLoader worker keeps the exactly-once property of both.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
from webdataset.pytorch import IterableDataset

from factory.errors import FactoryError
from factory.stream.topology import derive_seed, resolve_topology, worker_info

REAL, SYNTHETIC = "real", "synthetic"


class Mix(IterableDataset):  # torch's where torch is installed, as webdataset's pipelines
    """Samples from `real` and `synthetic`, each tagged `__source__`; a sample is synthetic with
    probability `ratio`. It ends when the source drawn is exhausted, or with longest=True when both are."""

    def __init__(self, real: Iterable[dict[str, Any]], synthetic: Iterable[dict[str, Any]], ratio: float,
                 seed: int = 0, longest: bool = False, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        if not 0.0 <= float(ratio) <= 1.0:
            raise FactoryError(f"mix ratio is the synthetic share and must lie in [0, 1], got {ratio}")
        self.real, self.synthetic = real, synthetic
        self.ratio = float(ratio)
        self.seed = int(seed)
        self.epoch = 0
        self.longest = longest
        self.rank = resolve_topology(rank, world_size).rank

    def set_epoch(self, epoch: int) -> None:
        """Reseed the draw and pass the epoch on to sources that take one."""
        self.epoch = int(epoch)
        for source in (self.real, self.synthetic):
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, _ = worker_info()
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch, self.rank, worker))
        # A share of exactly 0 or 1 never touches the other source (it may be endless or costly to open).
        sources = {REAL: iter(self.real) if self.ratio < 1 else None,
                   SYNTHETIC: iter(self.synthetic) if self.ratio > 0 else None}
        while any(sources.values()):
            if sources[REAL] is None:
                name = SYNTHETIC
            elif sources[SYNTHETIC] is None:
                name = REAL
            else:
                name = SYNTHETIC if rng.random() < self.ratio else REAL
            try:
                sample = next(sources[name])
            except StopIteration:
                if not self.longest:
                    return
                sources[name] = None
                continue
            yield {**sample, "__source__": name}


def mix(real: Iterable[dict[str, Any]] | str, synthetic: Iterable[dict[str, Any]] | str, ratio: float, *,
        seed: int = 0, longest: bool = False, rank: int | None = None, world_size: int | None = None) -> Mix:
    """Interleave `real` and `synthetic` (sample-dict iterables, or run URLs opened with default
    options) so that a share `ratio` of the samples is synthetic."""
    from factory.stream.run import open_run

    if isinstance(real, str):
        real = open_run(real, rank=rank, world_size=world_size)
    if isinstance(synthetic, str):
        synthetic = open_run(synthetic, rank=rank, world_size=world_size)
    return Mix(real, synthetic, ratio, seed=seed, longest=longest, rank=rank, world_size=world_size)
