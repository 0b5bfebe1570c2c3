"""The run manifest: written last, it lists exactly the committed shards of a finished run."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any, Iterable

from factory import storage
from factory.errors import BadInputError, FactoryError
from factory.produce.shards import MANIFEST_NAME, RunSpec, check_belongs
from factory.storage import StorageOptions
from factory.validation import SCHEMA_VERSION, dump_json, parse_json


def manifest_url(out: str) -> str:
    return storage.join(out, MANIFEST_NAME)


def build_manifest(spec: RunSpec, records: Iterable[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    shards = sorted(records, key=lambda r: r["index"])
    if [r["index"] for r in shards] != list(range(spec.num_shards)):
        raise FactoryError(f"run {spec.run_id}: cannot write a manifest before all {spec.num_shards} shards commit")
    histogram: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    for record in shards:
        histogram.update(record.get("label_histogram", {}))
        dropped.update(record.get("dropped", {}))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": spec.command,
        "config": spec.config,
        "config_sha256": spec.config_sha256,
        "sample_kind": spec.sample_kind,
        "requested": spec.requested,
        "shard_size": spec.shard_size,
        "count": sum(r["count"] for r in shards),
        "bytes": sum(r["bytes"] for r in shards),
        "label_histogram": dict(sorted(histogram.items())),
        "dropped": dict(sorted(dropped.items())),
        "shards": shards,
    }
    if extra:
        manifest["extra"] = extra
    return manifest


def write_manifest(out: str, manifest: dict[str, Any], storage_options: StorageOptions = None) -> None:
    url = manifest_url(out)
    storage.atomic_put(url, dump_json(manifest, "manifest", url), storage_options)


def read_manifest(out: str, storage_options: StorageOptions = None) -> dict[str, Any]:
    """Parse and validate `{out}/manifest.json`; errors name the file and the field."""
    url = manifest_url(out)
    if not storage.exists(url, storage_options):
        raise BadInputError(url, "no manifest: not a finished run (run the same command again to resume)")
    manifest = parse_json(storage.read_bytes(url, storage_options), "manifest", url)
    for position, record in enumerate(manifest["shards"]):
        if record["run_id"] != manifest["run_id"] or record["index"] != position:
            raise BadInputError(url, f"shards[{position}]: does not belong at this position of run {manifest['run_id']}")
    return manifest


def existing_manifest(out: str, spec: RunSpec, storage_options: StorageOptions = None) -> dict[str, Any] | None:
    """The manifest of a finished run with this spec, None if there is none yet; a foreign or
    unreadable manifest is an error, so a run never overwrites what it does not own."""
    if not storage.exists(manifest_url(out), storage_options):
        return None
    manifest = read_manifest(out, storage_options)
    check_belongs(manifest, spec, manifest_url(out))
    return manifest

