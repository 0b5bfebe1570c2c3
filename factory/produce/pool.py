"""The production actor pool: shard indices out, committed shards back, the manifest last.

Each actor builds its producer once (a bundle loads once per actor, onto its GPU when it has one),
is handed shard indices, generates in batches while a thread pool encodes the previous batch, and
writes its shards straight to storage. Only shard indices and small commit records cross the driver,
so the driver's memory does not grow with the run. A shard whose actor dies goes back to the queue
and a replacement actor takes over; an interrupted run resumes from its committed shards.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

from factory import storage
from factory.errors import FactoryError
from factory.produce.gates import build_gate
from factory.produce.manifest import build_manifest, existing_manifest, write_manifest
from factory.produce.producer_specs import ProducerSpec
from factory.produce.samples import Dropped, EncodedSample, encode_sample
from factory.produce.shards import RunSpec, write_encoded_shard
from factory.produce.writer import committed_shards

log = logging.getLogger(__name__)

# glibc returns every large tensor buffer to the kernel (mmap/munmap per allocation) by default; on
# CPU generators that can cost more than the maths (docs/bench/produce.md). Keeping freed memory in
# the heap avoids it.
ACTOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
MAX_ACTOR_REPLACEMENTS = 8


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
        return write_encoded_shard(self.out, self.spec, shard_index, self._encoded(shard_index))

    def pid(self) -> int:
        return os.getpid()


def connect_ray():
    import ray

    if not ray.is_initialized():
        # RAY_ADDRESS, when set, points at an existing cluster; otherwise a local one starts.
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


@contextlib.contextmanager
def interrupt_flag() -> Iterator[threading.Event]:
    """Ctrl-C (SIGINT) sets a flag that the driver loop checks, instead of raising wherever it lands:
    a KeyboardInterrupt raised while Ray runs a Cython callback on the main thread is printed as
    "Exception ignored" and lost (ray-project/ray#7734), and the run then simply went on to the end.
    Off the main thread (where handlers cannot be set) the flag is never set."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def reraise_user_error(ray):
    """A FactoryError raised in an actor or task reaches the caller as itself (one line naming the
    file and the problem), not wrapped in Ray's remote traceback."""
    try:
        yield
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, FactoryError):
            raise err.cause from None
        raise


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
    interrupted run calls it again."""
    from tqdm import tqdm

    out = storage.absolute(out)
    manifest = existing_manifest(out, spec)
    if manifest is not None:
        log.info("%s already holds the finished run %s", out, spec.run_id)
        return manifest
    records = committed_shards(out, spec)
    queue = collections.deque(i for i in range(spec.num_shards) if i not in records)
    ray = connect_ray()
    actor_class = ray.remote(ShardWorker)
    actor_options = {"num_cpus": cpus_per_actor, "num_gpus": gpus_per_actor, "runtime_env": {"env_vars": ACTOR_ENV}}
    prefix = actor_name_prefix or f"medsynth-{spec.run_id}"
    created = 0

    def new_actor():
        nonlocal created
        name = f"{prefix}-{created}"
        created += 1
        return actor_class.options(name=name, **actor_options).remote(producer_spec, out, spec, batch_size, gates)

    pool = [new_actor() for _ in range(min(actors, len(queue)) or 0)]
    in_flight: dict[Any, tuple[Any, int]] = {}  # future -> (actor, shard index)
    replacements = 0
    bar = tqdm(total=spec.requested, desc=f"produce {spec.run_id}", unit="sample", disable=not progress,
               smoothing=0.1)
    bar.update(sum(len(spec.slots(i)) for i in records))
    with interrupt_flag() as interrupted:
        try:
            def dispatch(actor):
                # Two shards per actor in flight, so an actor never waits for the driver between shards.
                while queue and sum(1 for a, _ in in_flight.values() if a is actor) < 2:
                    shard_index = queue.popleft()
                    in_flight[actor.write.remote(shard_index)] = (actor, shard_index)

            for actor in pool:
                dispatch(actor)
            while in_flight:
                if interrupted.is_set():
                    raise KeyboardInterrupt
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
                if not done:
                    continue
                actor, shard_index = in_flight.pop(done[0])
                try:
                    with reraise_user_error(ray):
                        record = ray.get(done[0])
                except ray.exceptions.RayActorError as err:
                    if getattr(err, "actor_init_failed", False):  # a bad bundle or spec: replacing cannot help
                        raise FactoryError(f"run {spec.run_id}: production actor failed to start: {err}") from err
                    replacements += 1
                    if replacements > MAX_ACTOR_REPLACEMENTS:
                        raise FactoryError(f"run {spec.run_id}: actors keep dying ({err})") from err
                    log.warning("actor for shard %d died; the shard goes back to the queue", shard_index)
                    queue.appendleft(shard_index)
                    for future, (other, index) in list(in_flight.items()):
                        if other is actor:  # its other shard is lost with it
                            del in_flight[future]
                            queue.appendleft(index)
                    pool.remove(actor)
                    actor = new_actor()
                    pool.append(actor)
                    dispatch(actor)
                    continue
                records[shard_index] = record
                bar.update(len(spec.slots(shard_index)))
                if on_commit:
                    on_commit(shard_index, record)
                dispatch(actor)
        finally:
            bar.close()
            for actor in pool:
                ray.kill(actor)
    extra = finish(records) if finish else None
    manifest = build_manifest(spec, records.values(), extra)
    _remove_stale_partials(out)
    write_manifest(out, manifest)
    return manifest


def _remove_stale_partials(out: str) -> None:
    """Temporary files of writers that were killed mid-shard (local and memory stores only)."""
    for name in storage.list_names(out):
        if name.startswith(".") and name.endswith(".partial"):
            storage.remove(storage.join(out, name))
