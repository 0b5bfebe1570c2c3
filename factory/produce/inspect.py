"""`medsynth inspect URL`: verify a run and summarise it; `--sample N --out DIR` extracts one sample. A
generator bundle's folder is verified and summarised too."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from collections import defaultdict
from typing import Any

from factory import storage
from factory.errors import BadInputError
from factory.models.bundle_metadata import METADATA_NAME, describe, read_metadata, verify_files
from factory.run_manifest import manifest_url, read_manifest
from factory.produce.samples import sample_key
from factory.produce.shards import read_tar_members
from factory.produce.verify import verify_run


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="run or bundle folder, or URL (local path, file://, s3://)")
    parser.add_argument("--quick", action="store_true",
                        help="check shard presence and sizes only, not sha256 and tar contents")
    parser.add_argument("--sample", type=int, metavar="N", help="extract sample N")
    parser.add_argument("--out", help="folder for the extracted sample's files (with --sample)")


def run(args: argparse.Namespace) -> int:
    if not storage.exists(manifest_url(args.url)) and storage.exists(storage.join(args.url, METADATA_NAME)):
        return inspect_bundle(args)
    manifest = read_manifest(args.url)
    if args.sample is not None:
        if not args.out:
            raise BadInputError(args.url, "--sample needs --out DIR")
        print(extract_sample(args.url, manifest, args.sample, args.out))
        return 0
    verify_run(args.url, manifest, deep=not args.quick, progress=True)
    print(summary(args.url, manifest, verified="shards present, sizes match" if args.quick
                  else "every shard's sha256 and tar contents match"))
    return 0


def inspect_bundle(args: argparse.Namespace) -> int:
    if args.sample is not None:
        raise BadInputError(args.url, "a generator bundle has no samples: --sample reads a run")
    metadata = read_metadata(args.url)
    if not args.quick:
        verify_files(args.url, metadata)
    print(describe(args.url, metadata, "bundle.json's own hash" if args.quick
                   else "bundle.json's own hash and every file's size and sha256"))
    return 0


def summary(url: str, manifest: dict[str, Any], verified: str) -> str:
    lines = [
        f"run            {manifest['run_id']}  ({url})",
        f"schema         {manifest['schema_version']}",
        f"created        {manifest['created_at']}",
        f"command        {manifest['command'] or '-'}",
        f"kind           {manifest['sample_kind']}",
        f"shards         {len(manifest['shards'])} x up to {manifest['shard_size']} samples",
        f"samples        {manifest['count']} of {manifest['requested']} requested",
        f"bytes          {manifest['bytes']:,} ({manifest['bytes'] / 2**20:.1f} MiB)",
        f"verified       {verified}",
    ]
    volumes = (manifest.get("extra") or {}).get("volumes")
    if volumes:
        lines.append(f"volumes        {volumes['count']} Zarr arrays ({volumes['slices']} slices) in "
                     f"{storage.join(url, volumes['group'])}")
    threshold = manifest["config"].get("producer", {}).get("threshold")
    if threshold is not None:
        lines.append(f"pseudo-labels  kept where the classifier's confidence is at least {threshold:g}")
    if manifest["dropped"]:
        lines.append("dropped        " + ", ".join(f"{k}: {v}" for k, v in manifest["dropped"].items()))
    lines += timing_lines(manifest["shards"])
    if manifest["label_histogram"]:
        lines.append("labels (samples where present)")
        width = max(len(name) for name in manifest["label_histogram"])
        top = max(manifest["label_histogram"].values()) or 1
        for name, count in sorted(manifest["label_histogram"].items(), key=lambda kv: -kv[1]):
            share = count / max(manifest["count"], 1)
            lines.append(f"  {name:<{width}}  {count:>8}  {share:6.1%}  {'#' * round(30 * count / top)}")
    return "\n".join(lines)


def timing_lines(shards: list[dict[str, Any]]) -> list[str]:
    """How the shards were written, from their commit records (img2dataset's per-shard stats are the
    model): time per shard, samples per second of one writer and of the whole run, and the same by
    node. Records written before commits carried `seconds` and `node` are counted apart."""
    timed = [r for r in shards if "seconds" in r and "node" in r and "finished_at" in r]
    if not timed:
        return ["timing         not recorded (the shards' commit records predate it)"] if shards else []
    seconds = [r["seconds"] for r in timed]
    samples = sum(r["count"] for r in timed)
    total = sum(seconds)
    head = "timing         " if len(timed) == len(shards) else f"timing         {len(timed)} of {len(shards)} shards: "
    lines = [f"{head}{total:.1f} s writing shards, mean {total / len(timed):.2f} s a shard "
             f"(min {min(seconds):.2f}, max {max(seconds):.2f}), {_rate(samples, total)} samples/s per writer"]
    finished = [dt.datetime.fromisoformat(r["finished_at"]) for r in timed]
    began = min(end - dt.timedelta(seconds=r["seconds"]) for end, r in zip(finished, timed))
    span = (max(finished) - began).total_seconds()
    lines.append(f"wall           {span:.1f} s from the first shard's start to the last commit, "
                 f"{_rate(samples, span)} samples/s overall")
    by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in timed:
        by_node[record["node"]].append(record)
    width = max(len("node"), *(len(node) for node in by_node))
    lines += ["by node", f"  {'node':<{width}}  {'shards':>6}  {'samples':>8}  {'seconds':>8}  samples/s per writer"]
    for node, records in sorted(by_node.items()):
        count, spent = sum(r["count"] for r in records), sum(r["seconds"] for r in records)
        lines.append(f"  {node:<{width}}  {len(records):>6}  {count:>8}  {spent:>8.1f}  {_rate(count, spent)}")
    return lines


def _rate(samples: int, seconds: float) -> str:
    return f"{samples / seconds:,.1f}" if seconds > 0 else "-"


def extract_sample(url: str, manifest: dict[str, Any], index: int, out: str) -> str:
    """Write sample `index`'s members to `out` and return a printable description."""
    if not 0 <= index < manifest["requested"]:
        raise BadInputError(url, f"sample {index} is outside 0..{manifest['requested'] - 1}")
    record = manifest["shards"][index // manifest["shard_size"]]
    shard_url = storage.join(url, record["name"])
    key = sample_key(manifest["run_id"], index)
    members = {name.split(".", 1)[1]: data for name, data in read_tar_members(storage.read_bytes(shard_url), shard_url)
               if name.split(".", 1)[0] == key}
    if not members:
        reasons = ", ".join(record.get("dropped", {})) or "unknown reason"
        raise BadInputError(shard_url, f"sample {index} is not in its shard (dropped by a quality gate: {reasons})")
    os.makedirs(out, exist_ok=True)
    written = []
    for extension, data in members.items():
        path = os.path.join(out, f"{key}.{extension}")
        with open(path, "wb") as f:
            f.write(data)
        written.append(path)
    lines = [f"sample {index} from {shard_url}", "files: " + ", ".join(written)]
    if "txt" in members:
        lines += ["report:", members["txt"].decode("utf-8")]
    if "cls" in members:
        lines.append(f"cls: {members['cls'].decode()}")
    if "json" in members:
        lines += ["metadata:", json.dumps(json.loads(members["json"]), indent=2, sort_keys=True)]
    return "\n".join(lines)
