"""Generator bundles: the one format the factory loads trained models from.

A bundle is a folder (local path or any fsspec URL) with two objects:
- `weights.safetensors`: every network's state dict in one safetensors file, keys prefixed by the
  network's name ("G.blocks.0.conv1..."). No pickle anywhere.
- `bundle.json`: metadata per schemas/bundle.schema.json: recipe, model config, label names,
  vocabulary, training-data fingerprint, metrics, `files` (name, bytes, sha256 of each object) and
  `sha256`, the hash of the canonical JSON (sorted keys, no spaces) of the metadata without the
  `sha256` and `bundle_id` fields. The files' hashes are inside that metadata, so the top-level
  hash covers the weights too. `bundle_id` is `{recipe}-{sha256[:16]}`, derived from it.

The weights are written first and bundle.json last, each atomically, so a reader never sees
metadata that points at missing weights. `load_bundle` refuses (IntegrityError naming the file) any
bundle whose bytes or metadata do not match their hashes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from factory import storage
from factory.errors import BadInputError, IntegrityError
from factory.models import registry
from factory.models.bundle_metadata import (METADATA_NAME, WEIGHTS_NAME, bundle_id_for, check_file,
                                            metadata_sha256, read_metadata, verify_files)
from factory.validation import SCHEMA_VERSION, dump_json



@dataclass
class Bundle:
    url: str
    nets: dict[str, nn.Module]
    model_config: dict[str, Any]
    label_names: list[str]
    vocabulary: Any  # factory.data.text.vocab.Vocabulary, or None for image-only models
    metadata: dict[str, Any]

    @property
    def bundle_id(self) -> str:
        return self.metadata["bundle_id"]

    @property
    def sha256(self) -> str:
        return self.metadata["sha256"]

    @property
    def recipe(self) -> str:
        return self.metadata["recipe"]


def weights_bytes(nets: Mapping[str, nn.Module | Mapping[str, torch.Tensor]]) -> bytes:
    """All networks' state dicts as one safetensors blob, keys prefixed by network name."""
    tensors: dict[str, torch.Tensor] = {}
    for name, net in nets.items():
        state = net.state_dict() if isinstance(net, nn.Module) else net
        for key, tensor in state.items():
            # clone: safetensors refuses tensors that share storage (views, tied weights).
            tensors[f"{name}.{key}"] = tensor.detach().to("cpu").contiguous().clone()
    return save_safetensors(tensors)


def write_bundle(url: str, recipe: str, nets: Mapping[str, nn.Module | Mapping[str, torch.Tensor]],
                 model_config: Mapping[str, Any], label_names: Sequence[str],
                 vocabulary: Mapping[str, Any] | None, training_data: Mapping[str, Any],
                 metrics: Mapping[str, Any], trained: bool, created_at: str | None = None) -> dict[str, Any]:
    """Write a bundle under `url` and return its metadata (with bundle_id and sha256)."""
    weights = weights_bytes(nets)
    metadata: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "recipe": recipe,
        "created_at": created_at or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "trained": bool(trained),
        "model_config": dict(model_config),
        "label_names": list(label_names),
        "vocabulary": dict(vocabulary) if vocabulary is not None else None,
        "training_data": dict(training_data),
        "metrics": dict(metrics),
        "files": [{"name": WEIGHTS_NAME, "bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}],
    }
    digest = metadata_sha256(metadata)
    metadata["sha256"] = digest
    metadata["bundle_id"] = bundle_id_for(recipe, digest)
    metadata_url = storage.join(url, METADATA_NAME)
    document = dump_json(metadata, "bundle", metadata_url)
    storage.atomic_put(storage.join(url, WEIGHTS_NAME), weights)
    storage.atomic_put(metadata_url, document)
    return metadata


def load_bundle(url: str, device: str | torch.device = "cpu") -> Bundle:
    """Verify and load a bundle: networks rebuilt by recipe name, weights loaded, eval mode."""
    metadata = read_metadata(url)
    source = storage.join(url, METADATA_NAME)
    blobs: dict[str, bytes] = {}
    for entry in metadata["files"]:
        file_url = storage.join(url, entry["name"])
        data = storage.read_bytes(file_url)
        check_file(file_url, entry, len(data), hashlib.sha256(data).hexdigest())
        blobs[entry["name"]] = data
    weights_url = storage.join(url, WEIGHTS_NAME)
    if WEIGHTS_NAME not in blobs:
        raise BadInputError(source, f"files does not list {WEIGHTS_NAME}")
    try:
        tensors = load_safetensors(blobs[WEIGHTS_NAME])
    except SafetensorError as err:
        raise BadInputError(weights_url, f"not a safetensors file ({err})") from err

    try:
        config = registry.make_config(metadata["recipe"], metadata["model_config"])
        nets = registry.build_networks(metadata["recipe"], config)
    except (KeyError, ValueError) as err:
        raise BadInputError(source, f"cannot rebuild the networks: {err}") from err
    for name, net in nets.items():
        prefix = f"{name}."
        state = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        misfit = _misfit(net.state_dict(), state)
        if misfit:
            raise BadInputError(weights_url, f"weights do not fit network {name} as this version of the factory "
                                f"builds it ({misfit}); the bundle was written {metadata.get('created_at', '?')} by "
                                "a version whose network differs: train it again, or load it with that version")
        net.load_state_dict(state, strict=True)
        net.to(device).eval()
    unused = sorted({key.split(".", 1)[0] for key in tensors} - set(nets))
    if unused:
        raise BadInputError(weights_url, f"weights for networks the recipe does not have: {unused}")
    return Bundle(url=url, nets=nets, model_config=config, label_names=list(metadata["label_names"]),
                  vocabulary=_vocabulary(metadata.get("vocabulary"), source), metadata=metadata)


def _misfit(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], shown: int = 3) -> str:
    """What keeps `found` tensors from loading into a network whose state is `expected`, in a few
    words ("" when they fit)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = [f"{key} {tuple(found[key].shape)} where the network has {tuple(expected[key].shape)}"
                for key in sorted(set(expected) & set(found)) if found[key].shape != expected[key].shape]

    def listed(what: str, keys: list[str]) -> str:
        more = f", +{len(keys) - shown} more" if len(keys) > shown else ""
        return f"{len(keys)} {what}: {', '.join(keys[:shown])}{more}"

    return "; ".join(listed(what, keys) for what, keys in (("missing", missing), ("unexpected", unexpected),
                                                           ("of another shape", reshaped)) if keys)


def _vocabulary(data: Mapping[str, Any] | None, source: str):
    if data is None:
        return None
    from factory.data.text.vocab import Vocabulary

    return Vocabulary.from_json(data, f"{source}: vocabulary")
