"""Write a whole run from one iterator of samples, in this process, resumably.

The actor pool (factory.produce.pool) writes shards in parallel from shard indices; this serial
writer serves small runs, tests and data already in hand. Both share the shard and manifest code.
"""

from __future__ import annotations

import itertools
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from tqdm import tqdm

from factory import storage
from factory.errors import BadInputError, FactoryError
from factory.produce.manifest import build_manifest, existing_manifest, finish_run
from factory.produce.samples import Dropped, Sample
from factory.produce.shards import (RunSpec, check_belongs, read_sidecar, read_tar_members, sidecar_index,
                                    sidecar_name, verify_shard, write_shard)
from factory.storage import StorageOptions

log = logging.getLogger(__name__)


# Commit records and their shards are read this many at a time: on an object store each read waits on a
# round trip, and a serial scan of 10^5 shards would wait on 2*10^5 of them. Each thread holds one shard's
# bytes while it verifies them, so the scan's memory is this many shards.
SCAN_THREADS = 8
_SCAN_CHUNK = 512  # shards handed to the threads at once: the scan holds no future per shard of the run


def committed_shards(out: str, spec: RunSpec, storage_options: StorageOptions = None) -> dict[int, dict[str, Any]]:
    """Shards of this run already committed and verified; a shard of another run is an error. Found
    from the sidecars listed, so the work follows what is stored, not the number of shards planned."""
    indices = sorted(i for i in map(sidecar_index, storage.list_names(out, storage_options))
                     if i is not None and i < spec.num_shards)

    def check(index: int) -> dict[str, Any] | None:
        record = read_sidecar(out, index, storage_options)
        if record["run_id"] != spec.run_id:
            refuse_a_replaced_bundle(out, record, spec, storage_options)
        check_belongs(record, spec, storage.join(out, sidecar_name(index)))
        try:
            verify_shard(out, record, storage_options, sample_kind=spec.sample_kind)
        except FactoryError as err:
            log.warning("rewriting shard %d: %s", index, err)
            return None
        return record

    committed = {}
    with ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="scan") as threads:
        for start in range(0, len(indices), _SCAN_CHUNK):
            chunk = indices[start:start + _SCAN_CHUNK]
            for index, record in zip(chunk, threads.map(check, chunk)):
                if record is not None:
                    committed[index] = record
    return committed


def refuse_a_replaced_bundle(out: str, record: dict[str, Any], spec: RunSpec,
                             storage_options: StorageOptions = None) -> None:
    """A committed shard of another run, whose samples a bundle made: when the bundle the same settings
    name is no longer the one that made them (replaced in place), say so, naming it."""
    producer = spec.config.get("producer") or {}
    planned = producer.get("bundle_sha256")
    if not planned:
        return
    url = storage.join(out, record["name"])
    try:
        members = read_tar_members(storage.read_bytes(url, storage_options), url)
        made_with = next(json.loads(data)["source"].get("bundle_sha256") for name, data in members
                         if name.endswith(".json"))
    except (FactoryError, StopIteration, ValueError, KeyError):
        return  # the shard cannot tell; the generic refusal follows
    if made_with and made_with != planned:
        raise BadInputError(storage.join(producer["bundle"], "bundle.json"),
                            f"is not the bundle run {record['run_id']} at {out} was made with (sha256 "
                            f"{made_with[:12]}..., now {planned[:12]}...): put that bundle back to resume it, "
                            "or write to another location")


def write_run(
    samples: Iterable[Sample | Dropped],
    out: str,
    spec: RunSpec,
    storage_options: StorageOptions = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write samples 0..spec.requested-1 (in index order) into shards, then the manifest.

    Running again with the same spec after a failure skips committed shards and completes the run;
    on a finished run it returns the existing manifest.
    """
    manifest = existing_manifest(out, spec, storage_options)
    if manifest is not None:
        log.info("%s already holds the finished run %s", out, spec.run_id)
        return manifest
    records = committed_shards(out, spec, storage_options)
    bar = tqdm(total=spec.requested, desc=f"write {spec.run_id}", unit="sample", disable=not progress)
    bar.update(sum(len(spec.slots(i)) for i in records))
    for shard_index, group in itertools.groupby(samples, key=lambda s: s.index // spec.shard_size):
        if shard_index >= spec.num_shards:
            raise FactoryError(f"run {spec.run_id}: sample index beyond count {spec.requested}")
        if shard_index in records:
            for _ in group:  # committed already: consume this shard's samples unwritten
                pass
            continue
        records[shard_index] = write_shard(out, spec, shard_index, group, storage_options)
        bar.update(len(spec.slots(shard_index)))
    bar.close()
    manifest = build_manifest(spec, records.values())
    finish_run(out, spec, manifest, storage_options)
    return manifest
