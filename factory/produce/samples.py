"""What a producer hands the shard writer, and how a sample becomes WebDataset members.

Member names follow WebDataset conventions: `{run_id}-{index:010d}.{ext}`, with no dot in the key so
that readers, which split at the first dot, recover it; `ext` may hold dots itself (`ct.png`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from factory.validation import SCHEMA_VERSION, dump_json

# The members (extensions after the key) a sample of each kind holds, as encode_sample writes them
# from the producers' images, report and label. A shard holding any other member is refused when it is
# verified: plain WebDataset decoders act on extensions, and `.pyd` or `.pth` members are unpickled.
SAMPLE_MEMBERS: dict[str, frozenset[str]] = {
    "pair": frozenset({"png", "txt", "cls", "json"}),
    "image": frozenset({"png", "cls", "json"}),
    "translation": frozenset({"ct.png", "src.png", "json"}),
    "caption": frozenset({"png", "txt", "cls", "json"}),
    "explanation": frozenset({"png", "cf.png", "txt", "cls", "json"}),
}

# Fast zlib level: shards are written once and read many times, but on a CPU node encoding competes
# with the generator for cores; level 1 costs a few percent in size against levels 6-9.
PNG_COMPRESS_LEVEL = 1


@dataclass
class Sample:
    """One synthetic sample. `images` maps member extensions (`png`, `ct.png`, `src.png`, `cf.png`) to 2-D
    uint8/uint16 arrays or already-encoded PNG bytes; the first one is the sample's main image."""

    index: int
    images: dict[str, np.ndarray | bytes]
    metadata: dict[str, Any]
    report: str | None = None
    label: int | None = None  # written as `cls`: index of the primary label


@dataclass(frozen=True)
class Dropped:
    """A sample slot a quality gate refused; the shard counts it instead of writing it."""

    index: int
    reason: str


@dataclass
class EncodedSample:
    index: int
    members: dict[str, bytes | str]  # "__key__" (str) plus extensions (bytes), ready for the shard writer
    positive_labels: list[str] = field(default_factory=list)


def sample_key(run_id: str, index: int) -> str:
    return f"{run_id}-{index:010d}"


def encode_png(image: np.ndarray | bytes, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"images must be 2-D uint8 or uint16 arrays, got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def _image_info(image: np.ndarray | bytes) -> dict[str, int]:
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as decoded:
            width, height = decoded.size
            bit_depth = 16 if decoded.mode.startswith("I") else 8
        return {"height": height, "width": width, "bit_depth": bit_depth}
    return {"height": int(image.shape[0]), "width": int(image.shape[1]), "bit_depth": image.dtype.itemsize * 8}


def encode_sample(sample: Sample, run_id: str, seed: int, compress_level: int = PNG_COMPRESS_LEVEL) -> EncodedSample:
    """Encode one sample; its metadata is completed and validated against schemas/sample."""
    key = sample_key(run_id, sample.index)
    if not sample.images:
        raise ValueError(f"sample {sample.index} has no image")
    metadata = {
        **sample.metadata,
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "index": sample.index,
        "seed": seed,
        "image": _image_info(next(iter(sample.images.values()))),
    }
    members: dict[str, bytes | str] = {"__key__": key}
    for extension, image in sample.images.items():
        members[extension] = encode_png(image, compress_level)
    if sample.report is not None:
        members["txt"] = sample.report.encode("utf-8")
    if sample.label is not None:
        members["cls"] = str(int(sample.label)).encode()
    members["json"] = dump_json(metadata, "sample", f"sample {key}", indent=None)
    positives = [name for name, value in metadata.get("labels", {}).items() if value == 1]
    return EncodedSample(sample.index, members, positives)
