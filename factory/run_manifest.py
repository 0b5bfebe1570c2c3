"""A finished run's manifest as its readers see it: where it lives and a validated read.

Readers (factory.stream, `medsynth inspect`, evaluation) and the writer (factory.produce.manifest) share
this one definition; the writer's side (building, writing, the run's ownership check) stays with
production.
"""

from __future__ import annotations

from typing import Any

from factory import storage
from factory.errors import BadInputError
from factory.storage import StorageOptions
from factory.validation import parse_json

MANIFEST_NAME = "manifest.json"


def manifest_url(out: str) -> str:
    return storage.join(out, MANIFEST_NAME)


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
