"""Where this process sits in a distributed job: (rank, world size) and (DataLoader worker, workers).

The rank is resolved once, when a pipeline is built, in the training process itself: DataLoader
workers are separate processes in which neither torch.distributed nor Ray Train's context need be
initialised (always so under the `spawn` start method), so asking there could silently give rank 0
everywhere and every rank would read the whole run. The worker is asked for at iteration time, inside
the worker, the way webdataset's own splitters ask.

Sources, first match wins: explicit arguments; Ray Train's context inside a Ray Train worker;
an initialised torch.distributed group; the RANK / WORLD_SIZE variables torchrun sets; else one process.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import webdataset as wds

from factory.errors import FactoryError


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    source: str = "single process"

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise FactoryError(f"rank {self.rank} of world size {self.world_size} ({self.source}): "
                               "need 0 <= rank < world size")


def _ray_train_topology() -> Topology | None:
    # Only a process that already imported ray.train can be inside a Ray Train worker; importing Ray
    # here to find out would cost seconds in every plain torch job.
    if "ray.train" not in sys.modules:
        return None
    import ray.train

    try:
        context = ray.train.get_context()
        return Topology(context.get_world_rank(), context.get_world_size(), "Ray Train context")
    except RuntimeError:  # raised outside a training function
        return None


def _torch_topology() -> Topology | None:
    # Likewise an initialised process group needs torch.distributed imported already (and torch,
    # not in the base install, may be absent).
    if "torch.distributed" not in sys.modules:
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Topology(dist.get_rank(), dist.get_world_size(), "torch.distributed")
    return None


def _env_topology() -> Topology | None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        try:
            return Topology(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "RANK/WORLD_SIZE variables")
        except ValueError as err:
            raise FactoryError(f"RANK/WORLD_SIZE variables must be integers ({err})") from err
    return None


def resolve_topology(rank: int | None = None, world_size: int | None = None) -> Topology:
    """This process's (rank, world size); give both to override what the environment says."""
    if (rank is None) != (world_size is None):
        raise FactoryError("give both rank and world_size, or neither")
    if rank is not None:
        return Topology(int(rank), int(world_size), "explicit arguments")
    for finder in (_ray_train_topology, _torch_topology, _env_topology):
        found = finder()
        if found is not None:
            return found
    return Topology()


def worker_info() -> tuple[int, int]:
    """(worker id, number of workers) of the current torch DataLoader worker; (0, 1) outside one.
    The same source webdataset's split_by_worker reads, so seeds and splits agree."""
    _, _, worker, num_workers = wds.utils.pytorch_worker_info()
    return worker, num_workers


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, epoch, rank, worker ...), the same in every process.
    (Python's hash() of strings differs between processes, so seeds are built from integers only.)"""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]) >> 1
