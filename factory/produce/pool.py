"""The production actor pool: shard indices out, committed shards back, the manifest last.

Each actor builds its producer once (a bundle loads once per actor, onto its GPU when it has one),
is handed shard indices, generates in batches while a thread pool encodes the previous batch, and
writes its shards straight to storage. Only shard indices and small commit records cross the driver,
so the driver's memory does not grow with the run: the plan is a generator of shard indices, read as
actors take them. Shards go only to actors that have started, so actors the cluster cannot place
(more than it holds, or waiting for an autoscaler) never hold work; a wait with no actor started is
bounded. A shard whose actor dies goes back to the queue and a replacement actor takes over; an
interrupted run resumes from its committed shards. The driver records the run's Ray metrics
(factory.produce.metrics) as commit records arrive and actors are replaced.
"""

from __future__ import annotations

import collections
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Container, Iterator

from factory import storage
from factory.errors import FactoryError, StorageError
from factory.produce.gates import build_gate
from factory.produce.lock import driver_lock
from factory.produce.manifest import build_manifest, existing_manifest, finish_run
from factory.produce.metrics import PoolMetrics
from factory.produce.producer_specs import ProducerSpec
from factory.produce.samples import Dropped, EncodedSample, encode_sample
from factory.produce.shards import RunSpec, shard_name, write_encoded_shard
from factory.produce.writer import committed_shards
from factory.raytools import connect_ray, dispatch_bounded, fits, node_resources, ray_worker_env

log = logging.getLogger(__name__)

MAX_ACTOR_REPLACEMENTS = 8
SHARDS_PER_ACTOR = 2  # in flight at once, so an actor never waits for the driver between shards
# How long actors may take to start (be placed and build their producer) before the run goes on
# without them, or fails when none has started: an autoscaler's cold cloud node (instance start, a
# multi-GB image pull) plus a bundle load fit in it.
ACTOR_START_TIMEOUT_MIN = 15


class ShardWorker:
    """Generates, encodes and writes whole shards. Used inside a Ray actor, or directly."""

    def __init__(self, producer_spec: ProducerSpec, out: str, spec: RunSpec, batch_size: int = 32,
                 gates: list[dict[str, Any]] | None = None, encode_threads: int = 2):
        self.startup_error: FactoryError | None = None
        try:
            self.producer = producer_spec.build(spec.seed)
            self.gates = [build_gate(g) for g in gates or []]
        except FactoryError as err:
            # Raised from write() instead: a user error (a bad bundle, a changed dataset) then reaches
            # the driver as itself, one line naming the file, not inside Ray's actor-death message.
            self.startup_error = err
        self.out, self.spec, self.batch_size = out, spec, batch_size
        self.encoder = ThreadPoolExecutor(max_workers=encode_threads, thread_name_prefix="encode")

    def _encoded(self, shard_index: int) -> Iterator[EncodedSample | Dropped]:
        """Encoded samples in order; batch k+1 is generated while batch k is being encoded."""
        slots = self.spec.slots(shard_index)
        pending: collections.deque = collections.deque()
        for start in range(slots.start, slots.stop, self.batch_size):
            batch = self.producer.make_batch(range(start, min(start + self.batch_size, slots.stop)))
            for gate in self.gates:
                batch = gate.apply(batch)
            while pending:
                yield pending.popleft().result()
            for item in batch:
                pending.append(self.encoder.submit(self._encode, item))
        while pending:
            yield pending.popleft().result()

    def _encode(self, item):
        if isinstance(item, Dropped):
            return item
        return encode_sample(item, self.spec.run_id, self.spec.seed)

    def write(self, shard_index: int) -> dict[str, Any]:
        if self.startup_error is not None:
            raise self.startup_error
        generation_failed = False

        def samples():
            nonlocal generation_failed
            try:
                yield from self._encoded(shard_index)
            except Exception:
                generation_failed = True
                raise

        try:
            return write_encoded_shard(self.out, self.spec, shard_index, samples())
        except Exception as err:
            # A store that fails mid-run (its endpoint gone, a full disk) reaches the driver as one line
            # naming the shard; errors of generation travel as they are.
            problem = None if generation_failed or isinstance(err, FactoryError) else storage.storage_problem(err)
            if problem is None:
                raise
            raise StorageError(storage.join(self.out, shard_name(shard_index)),
                               f"{problem}; committed shards are kept, run the same command again to resume") from err

    def pid(self) -> int:
        return os.getpid()


def shards_to_write(spec: RunSpec, committed: Container[int]) -> Iterator[int]:
    """The run's plan: the indices of its shards not yet committed, generated as they are handed out,
    so that planning holds nothing per shard however large the run."""
    return (index for index in range(spec.num_shards) if index not in committed)


def _actor_fit(ray, need: dict[str, float]) -> str:
    """What an actor needs against what the cluster's nodes hold, for messages."""
    most = {name: max((node.get(name, 0.0) for node in node_resources(ray)), default=0.0) for name in need}
    return (f"each actor needs {need['CPU']:g} CPU and {need['GPU']:g} GPU (--cpus-per-actor, --gpus-per-actor), "
            f"the cluster's nodes have at most {most['CPU']:g} CPU and {most['GPU']:g} GPU")


def produce(
    producer_spec: ProducerSpec,
    out: str,
    spec: RunSpec,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    batch_size: int = 32,
    gates: list[dict[str, Any]] | None = None,
    progress: bool = True,
    actor_name_prefix: str | None = None,
    on_commit: Callable[[int, dict[str, Any]], None] | None = None,
    finish: Callable[[dict[int, dict[str, Any]]], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Write the run described by `spec` with a pool of `actors` Ray actors; return its manifest.

    `on_commit(shard_index, record)` is called on the driver as each shard is committed (job
    progress reporting, benchmarks). `finish(records)` runs once every shard has committed and the
    actors are gone, before the manifest: work built from the committed shards (a translation's
    Zarr volumes); what it returns becomes the manifest's `extra`. It must be resumable itself: an
    interrupted run calls it again. One driver at a time writes a run location (factory.produce.lock):
    another one started there meanwhile is refused."""
    out = storage.absolute(out)
    manifest = existing_manifest(out, spec)
    if manifest is not None:
        log.info("%s already holds the finished run %s", out, spec.run_id)
        return manifest
    with driver_lock(out, spec.run_id):
        # Another driver may have finished the run while this one waited for the lock.
        return existing_manifest(out, spec) or _produce(producer_spec, out, spec, actors, cpus_per_actor,
                                                        gpus_per_actor, batch_size, gates, progress,
                                                        actor_name_prefix, on_commit, finish)


def _produce(producer_spec, out, spec, actors, cpus_per_actor, gpus_per_actor, batch_size, gates, progress,
             actor_name_prefix, on_commit, finish) -> dict[str, Any]:
    """produce() once this driver holds the run location."""
    from tqdm import tqdm

    records = committed_shards(out, spec)
    ray = connect_ray()
    need = {"CPU": cpus_per_actor, "GPU": gpus_per_actor}
    wanted = min(actors, spec.num_shards - len(records))
    placeable = sum(fits(node, need) for node in node_resources(ray))
    if wanted and not placeable:
        log.warning("no node of the Ray cluster can hold a production actor now: %s; waiting up to %g min for "
                    "an autoscaler to add one", _actor_fit(ray, need), ACTOR_START_TIMEOUT_MIN)
    elif placeable < wanted:
        log.warning("%d actors asked, the cluster can place %d now: shards go to those, and up to %d more join "
                    "if an autoscaler adds nodes within %g min", actors, placeable, wanted - placeable,
                    ACTOR_START_TIMEOUT_MIN)
    actor_class = ray.remote(ShardWorker)
    actor_options = {"num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor,
                     "runtime_env": {"env_vars": ray_worker_env()}}
    prefix = actor_name_prefix or f"medsynth-{spec.run_id}"
    created = 0

    def new_actor():
        nonlocal created
        name = f"{prefix}-{created}"
        created += 1
        return actor_class.options(name=name, **actor_options).remote(producer_spec, out, spec, batch_size, gates)

    pool = [new_actor() for _ in range(wanted)]
    metrics = PoolMetrics(spec.run_id)
    replacements = 0
    bar = tqdm(total=spec.requested, desc=f"produce {spec.run_id}", unit="sample", disable=not progress,
               smoothing=0.1)
    bar.update(sum(len(spec.slots(i)) for i in records))

    def write(actor, shard_index: int):
        return actor.write.remote(shard_index)

    def committed(shard_index: int, record: dict[str, Any]) -> None:
        records[shard_index] = record
        metrics.committed(record)
        bar.update(len(spec.slots(shard_index)))
        if on_commit:
            on_commit(shard_index, record)

    def replace(actor, shard_index: int | None, err: Exception):
        nonlocal replacements
        if getattr(err, "actor_init_failed", False):  # a bad bundle or spec: replacing cannot help
            raise FactoryError(f"run {spec.run_id}: production actor failed to start: {err}") from err
        replacements += 1
        metrics.restarted()
        if replacements > MAX_ACTOR_REPLACEMENTS:
            raise FactoryError(f"run {spec.run_id}: actors keep dying ({err})") from err
        if shard_index is None:
            log.warning("an actor died before it took a shard; a new one takes its place")
        else:
            log.warning("actor for shard %d died; the shard goes back to the queue", shard_index)
        pool.remove(actor)
        pool.append(new_actor())
        return pool[-1]

    def not_started(actors_late: list, running: int) -> None:
        for actor in actors_late:
            pool.remove(actor)
            ray.kill(actor)
        if not running:
            raise FactoryError(f"run {spec.run_id}: no production actor started within "
                               f"{ACTOR_START_TIMEOUT_MIN:g} min; {_actor_fit(ray, need)}")
        log.warning("%d actors did not start within %g min; the run goes on with the %d that did",
                    len(actors_late), ACTOR_START_TIMEOUT_MIN, running)

    try:
        dispatch_bounded(ray, shards_to_write(spec, records), list(pool), SHARDS_PER_ACTOR, write, committed,
                         replace, ready=lambda actor: actor.__ray_ready__.remote(),
                         start_timeout_s=ACTOR_START_TIMEOUT_MIN * 60, not_started=not_started)
    finally:
        bar.close()
        for actor in pool:
            ray.kill(actor)
    extra = finish(records) if finish else None
    manifest = build_manifest(spec, records.values(), extra)
    _remove_stale_partials(out)
    finish_run(out, spec, manifest)
    return manifest


def _remove_stale_partials(out: str) -> None:
    """Temporary files of writers that were killed mid-shard (local and memory stores only)."""
    for name in storage.list_names(out):
        if name.startswith(".") and name.endswith(".partial"):
            storage.remove(storage.join(out, name))
