"""One shard: written complete or not at all, then committed by a sidecar.

Shard i of a run covers sample slots [i*S, (i+1)*S) and lives at `{out}/shard-{i:06d}.tar`. The tar
is published atomically (storage.atomic_writer); only then is its sidecar `shard-{i:06d}.commit.json`
written, holding the count, bytes and sha256. A shard is committed when its sidecar exists, belongs to
this run, and the tar matches it. A tar without a sidecar (a crash between the two writes) is simply
written again: the bytes are the same. The record also says how long the shard took and which host
wrote it (`seconds`, `finished_at`, `node`): the tars of two runs with equal specs are byte-identical,
their records are not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import socket
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Iterable

from factory import storage
from factory.config import run_size_problem
from factory.errors import BadInputError, FactoryError, IntegrityError
from factory.produce.samples import SAMPLE_MEMBERS, Dropped, EncodedSample, Sample, encode_sample
from factory.storage import StorageOptions
from factory.validation import SCHEMA_VERSION, dump_json, parse_json, validate

TAR_USER = "medsynth"
TAR_MODE = 0o444


def _add_members(tar: tarfile.TarFile, members: dict[str, bytes | str]) -> None:
    """A sample's members as `KEY.EXT` files, extensions sorted, with fixed metadata: what
    webdataset.TarWriter(encoder=False, mtime=0) writes, byte for byte. Written here because importing
    webdataset imports torch where it is installed: 2-3 CPU-s and ~300 MB per production actor that
    otherwise has no use for it."""
    key = members["__key__"]
    for extension in sorted(members):
        if extension.startswith("_"):  # __key__, and metadata entries webdataset leaves out too
            continue
        data = members[extension]
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"sample {key}: member {extension} is {type(data).__name__}, not bytes")
        info = tarfile.TarInfo(f"{key}.{extension}")
        info.size, info.mtime, info.mode = len(data), 0, TAR_MODE
        info.uname = info.gname = TAR_USER
        tar.addfile(info, io.BytesIO(data))


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sidecar_name(index: int) -> str:
    return f"shard-{index:06d}.commit.json"


def sidecar_index(name: str) -> int | None:
    """The shard index whose sidecar is named `name`, None for any other name."""
    match = re.fullmatch(r"shard-([0-9]+)\.commit\.json", name)
    if match is None or sidecar_name(int(match[1])) != name:
        return None
    return int(match[1])


def canonical_sha256(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class RunSpec:
    """Everything that fixes a run's bytes. Two invocations with equal specs write equal shards."""

    run_id: str
    requested: int  # sample slots 0..requested-1
    shard_size: int
    seed: int
    sample_kind: str  # pair | image | translation | caption | explanation (SAMPLE_MEMBERS)
    config: dict[str, Any] = field(default_factory=dict)  # echoed into the manifest, no credentials
    command: str = ""

    def __post_init__(self):
        validate({"schema_version": SCHEMA_VERSION, "name": "shard-000000.tar", "index": 0, "first_index": 0,
                  "count": 0, "bytes": 0, "sha256": "0" * 64, "run_id": self.run_id,
                  "config_sha256": "0" * 64}, "shard", f"run id {self.run_id!r}")
        if self.requested < 0 or self.shard_size < 1:
            raise FactoryError(f"run {self.run_id}: need count >= 0 and shard size >= 1")
        problem = run_size_problem(self.requested, self.shard_size)
        if problem:
            raise FactoryError(f"run {self.run_id}: {problem}")

    @property
    def config_sha256(self) -> str:
        return canonical_sha256({"run_id": self.run_id, "requested": self.requested, "shard_size": self.shard_size,
                                 "seed": self.seed, "sample_kind": self.sample_kind, "config": self.config})

    @property
    def num_shards(self) -> int:
        return -(-self.requested // self.shard_size)

    def slots(self, shard_index: int) -> range:
        first = shard_index * self.shard_size
        return range(first, min(first + self.shard_size, self.requested))


class _HashingWriter:
    """Forwards writes and hashes them, so a shard's sha256 needs no second read from storage."""

    def __init__(self, target: IO[bytes]):
        self.target = target
        self.digest = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.bytes += len(data)
        return self.target.write(data)


def write_encoded_shard(
    out: str,
    spec: RunSpec,
    shard_index: int,
    samples: Iterable[EncodedSample | Dropped],
    storage_options: StorageOptions = None,
) -> dict[str, Any]:
    """Write shard `shard_index` from encoded samples in index order; return its commit record.

    Every slot of the shard must be accounted for (written or dropped), or nothing is published.
    """
    began = time.perf_counter()
    slots = spec.slots(shard_index)
    expected = iter(slots)
    histogram: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    count = 0
    name = shard_name(shard_index)
    with storage.atomic_writer(storage.join(out, name), storage_options) as f:
        hashing = _HashingWriter(f)
        tar = tarfile.open(fileobj=hashing, mode="w|")
        try:
            for item in samples:
                slot = next(expected, None)
                if item.index != slot:
                    raise FactoryError(f"shard {name}: expected sample {slot}, got {item.index}")
                if isinstance(item, Dropped):
                    dropped[item.reason] += 1
                    continue
                _add_members(tar, item.members)
                histogram.update(item.positive_labels)
                count += 1
            missing = next(expected, None)
            if missing is not None:
                raise FactoryError(f"shard {name}: samples ended before slot {missing}")
        except BaseException:
            # Abandon the tar stream: its finaliser would otherwise flush into the aborted upload.
            tar.fileobj.closed = True
            raise
        tar.close()  # writes the end-of-archive blocks; the file itself is ours to close
    record = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "index": shard_index,
        "first_index": slots.start,
        "count": count,
        "bytes": hashing.bytes,
        "sha256": hashing.digest.hexdigest(),
        "run_id": spec.run_id,
        "config_sha256": spec.config_sha256,
        "label_histogram": dict(sorted(histogram.items())),
        "dropped": dict(sorted(dropped.items())),
        # Generating, gating, encoding and publishing the tar: what a producer's throughput is made of.
        "seconds": round(time.perf_counter() - began, 3),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "node": socket.gethostname(),
    }
    sidecar_url = storage.join(out, sidecar_name(shard_index))
    storage.atomic_put(sidecar_url, dump_json(record, "shard", sidecar_url), storage_options)
    return record


def write_shard(
    out: str,
    spec: RunSpec,
    shard_index: int,
    samples: Iterable[Sample | Dropped],
    storage_options: StorageOptions = None,
) -> dict[str, Any]:
    """Encode and write one shard (see write_encoded_shard)."""
    encoded = (s if isinstance(s, Dropped) else encode_sample(s, spec.run_id, spec.seed) for s in samples)
    return write_encoded_shard(out, spec, shard_index, encoded, storage_options)


def read_sidecar(out: str, shard_index: int, storage_options: StorageOptions = None) -> dict[str, Any] | None:
    url = storage.join(out, sidecar_name(shard_index))
    if not storage.exists(url, storage_options):
        return None
    return parse_json(storage.read_bytes(url, storage_options), "shard", url)


def check_belongs(record: dict[str, Any], spec: RunSpec, source: str) -> None:
    if record["run_id"] != spec.run_id or record["config_sha256"] != spec.config_sha256:
        raise FactoryError(
            f"{source}: belongs to run {record['run_id']} with another configuration; "
            "choose another output location or the same settings"
        )


def verify_shard(out: str, record: dict[str, Any], storage_options: StorageOptions = None, deep: bool = True, *,
                 sample_kind: str) -> None:
    """Check a committed shard against its record: present, same size, and (deep) same sha256 and a
    readable tar holding `count` samples with only the members of `sample_kind` (SAMPLE_MEMBERS).
    Raises IntegrityError naming the shard."""
    url = storage.join(out, record["name"])
    if not storage.exists(url, storage_options):
        raise IntegrityError(url, "listed as committed but missing")
    actual_size = storage.size(url, storage_options)
    if actual_size != record["bytes"]:
        hint = " (truncated)" if actual_size < record["bytes"] else ""
        raise IntegrityError(url, f"is {actual_size} bytes, its record says {record['bytes']}{hint}")
    if not deep:
        return
    data = storage.read_bytes(url, storage_options)
    digest = hashlib.sha256(data).hexdigest()
    if digest != record["sha256"]:
        raise IntegrityError(url, f"sha256 {digest[:12]}… differs from its record {record['sha256'][:12]}…")
    allowed = SAMPLE_MEMBERS.get(sample_kind, frozenset())
    keys: list[str] = []  # a sample's members are adjacent
    for name, _ in read_tar_members(data, url):
        key, extension = name.partition(".")[::2]
        if extension not in allowed:
            raise IntegrityError(url, f"member {name} is not one the format defines for {sample_kind} samples")
        if not keys or keys[-1] != key:
            keys.append(key)
    if len(keys) != record["count"]:
        raise IntegrityError(url, f"holds {len(keys)} samples, its record says {record['count']}")


def read_tar_members(data: bytes, source: str) -> list[tuple[str, bytes]]:
    """All (member name, bytes) of a tar, in order; a truncated or corrupt tar raises BadInputError."""
    members = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    extracted = tar.extractfile(info)
                    members.append((info.name, extracted.read() if extracted else b""))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise BadInputError(source, f"truncated or corrupt tar ({err})") from err
    if len(data) % tarfile.BLOCKSIZE or data[-2 * tarfile.BLOCKSIZE:].strip(b"\0"):
        raise BadInputError(source, "truncated tar (no end-of-archive marker)")
    return members
