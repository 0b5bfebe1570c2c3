"""A bundle's metadata (bundle.json) and the check of its files, without torch: what `medsynth inspect`
and drivers read before any network is built. factory.models.bundle writes and loads whole bundles."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from factory import storage
from factory.errors import IntegrityError
from factory.validation import parse_json

METADATA_NAME = "bundle.json"
WEIGHTS_NAME = "weights.safetensors"
_DERIVED = ("sha256", "bundle_id")


def metadata_sha256(metadata: Mapping[str, Any]) -> str:
    """Hash of the metadata without its derived fields (sorted keys, compact separators)."""
    body = {key: value for key, value in metadata.items() if key not in _DERIVED}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def bundle_id_for(recipe: str, sha256: str) -> str:
    return f"{recipe.lower()}-{sha256[:16]}"


def read_metadata(url: str) -> dict[str, Any]:
    """bundle.json, schema-checked and its own hash verified (the files are not read)."""
    source = storage.join(url, METADATA_NAME)
    metadata = parse_json(storage.read_bytes(source), "bundle", source)
    digest = metadata_sha256(metadata)
    if digest != metadata["sha256"]:
        raise IntegrityError(source, f"metadata sha256 is {digest}, the bundle says {metadata['sha256']}: "
                                     "bundle.json was changed after it was written")
    if metadata["bundle_id"] != bundle_id_for(metadata["recipe"], digest):
        raise IntegrityError(source, f"bundle_id {metadata['bundle_id']!r} does not match its sha256")
    return metadata


def check_file(file_url: str, entry: Mapping[str, Any], found: int, digest: str) -> None:
    if found != entry["bytes"] or digest != entry["sha256"]:
        raise IntegrityError(file_url, f"{found} bytes with sha256 {digest}; bundle.json promises "
                                       f"{entry['bytes']} bytes with sha256 {entry['sha256']}")


def verify_files(url: str, metadata: Mapping[str, Any]) -> None:
    """Check each file `metadata` lists against its size and sha256, streamed: drivers refuse a damaged
    bundle before any worker starts (load_bundle checks the bytes it loads again)."""
    for entry in metadata["files"]:
        file_url = storage.join(url, entry["name"])
        check_file(file_url, entry, storage.size(file_url), storage.sha256(file_url))




def read_verified(url: str) -> dict[str, Any]:
    """bundle.json with every file it lists checked: what a driver reads before Ray starts, so that a
    damaged bundle is refused before any worker loads it. Its sha256 joins a run's identity."""
    metadata = read_metadata(url)
    verify_files(url, metadata)
    return metadata


def describe(url: str, metadata: Mapping[str, Any], verified: str) -> str:
    """A bundle's summary for `medsynth inspect`: what it is, what it was trained on, its files."""
    config = metadata["model_config"]
    data = metadata["training_data"]
    metrics = metadata.get("metrics") or {}
    steps = metrics.get("steps")
    losses = ", ".join(f"{key} {value:.4g}" for key, value in sorted(metrics.items())
                       if isinstance(value, (int, float)) and key != "steps" and not key.startswith("lr_"))
    vocabulary = metadata.get("vocabulary")
    lines = [
        f"bundle         {metadata['bundle_id']}  ({url})",
        f"model          {metadata['recipe']}" + ("" if metadata.get("trained", True) else "  (untrained: random weights)"),
        f"created        {metadata['created_at']}",
        f"image size     {config['image_size']}" if "image_size" in config else None,
        f"labels         {', '.join(metadata['label_names']) or '-'}",
        f"vocabulary     {len(vocabulary.get('tokens', vocabulary))} words" if vocabulary else None,
        f"training data  {data.get('count', '?')} samples, fingerprint {data['fingerprint'][:16]}",
        f"trained        {int(steps)} steps" if steps is not None else None,
        f"last losses    {losses}" if losses else None,
        *(f"file           {entry['name']}  {entry['bytes']:,} bytes  sha256 {entry['sha256'][:16]}"
          for entry in metadata["files"]),
        f"verified       {verified}",
    ]
    return "\n".join(line for line in lines if line is not None)
