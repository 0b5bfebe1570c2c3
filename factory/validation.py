"""JSON Schema validation of what the factory writes and reads (schemas/ at the repo top level).

Writers validate before they write; readers validate after they parse. A failure names the file and
the offending field, e.g. `s3://b/run/manifest.json: shards[3].sha256: 'xyz' does not match ...`.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema
from referencing import Registry, Resource

from factory.errors import BadInputError

SCHEMA_VERSION = "1.0"
SCHEMA_NAMES = ("sample", "shard", "manifest", "bundle")


class SchemaError(BadInputError):
    """A document does not match its JSON Schema."""


@functools.cache
def _registry() -> Registry:
    folder = resources.files("factory").joinpath("schemas")
    resources_by_name = {}
    for name in SCHEMA_NAMES:
        document = json.loads(folder.joinpath(f"{name}.schema.json").read_text())
        resources_by_name[f"{name}.schema.json"] = Resource.from_contents(document)
        resources_by_name[document["$id"]] = Resource.from_contents(document)
    return Registry().with_resources(resources_by_name.items())


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = _registry()[f"{name}.schema.json"].contents
    return jsonschema.Draft202012Validator(
        schema, registry=_registry(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def field_path(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(document)"


def validate(document: Any, schema: str, source: str) -> None:
    """Raise SchemaError naming `source` and the first offending field."""
    errors = sorted(validator(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    error = jsonschema.exceptions.best_match(errors)
    if (error.validator == "const" and list(error.absolute_path) == ["schema_version"]):
        found = document.get("schema_version") if isinstance(document, dict) else None
        raise SchemaError(source, f"schema_version {found!r} is not supported (this reader knows {SCHEMA_VERSION!r})")
    raise SchemaError(source, f"{field_path(error)}: {error.message}")


def parse_json(data: bytes | str, schema: str, source: str) -> dict[str, Any]:
    """Parse and validate a JSON document read from `source`."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInputError(source, f"not valid JSON ({err})") from err
    validate(document, schema, source)
    return document


def dump_json(document: Any, schema: str, source: str, indent: int | None = 1) -> bytes:
    """Validate and serialise deterministically (sorted keys)."""
    validate(document, schema, source)
    if indent is None:
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps(document, sort_keys=True, indent=indent).encode() + b"\n"
