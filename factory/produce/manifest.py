"""The run manifest: written last, it lists exactly the committed shards of a finished run."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any, Iterable

from factory import storage
from factory.errors import BadInputError, FactoryError
from factory.produce.card import card_url, write_card
from factory.produce.shards import RunSpec, check_belongs
from factory.storage import StorageOptions
from factory.run_manifest import manifest_url, read_manifest
from factory.validation import SCHEMA_VERSION, dump_json, parse_json


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


def finish_run(out: str, spec: RunSpec, manifest: dict[str, Any], storage_options: StorageOptions = None) -> None:
    """The last two writes of a run: its dataset card (factory.produce.card), then its manifest."""
    write_card(out, manifest, spec.seed, storage_options)
    write_manifest(out, manifest, storage_options)


def existing_manifest(out: str, spec: RunSpec, storage_options: StorageOptions = None) -> dict[str, Any] | None:
    """The manifest of a finished run with this spec, None if there is none yet; a foreign or
    unreadable manifest is an error, so a run never overwrites what it does not own."""
    if not storage.exists(manifest_url(out), storage_options):
        return None
    manifest = read_manifest(out, storage_options)
    check_belongs(manifest, spec, manifest_url(out))
    if not storage.exists(card_url(out), storage_options):  # a run finished before runs had cards
        write_card(out, manifest, spec.seed, storage_options)
    return manifest

