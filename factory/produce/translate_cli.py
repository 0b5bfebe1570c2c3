"""`medsynth translate`: a translation bundle (duiit) turns a source dataset's MRI/PET slices into CT
shards with the production actor pool, and its 3-D volumes into a Zarr group beside them."""

from __future__ import annotations

import argparse
import shlex
import sys

from factory.config import TranslateConfig
from factory.produce.cli import add_config_flags, load_from_flags


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, TranslateConfig)


def run(args: argparse.Namespace) -> int:
    from factory.produce.runs import run_translation

    config = load_from_flags(TranslateConfig, args)
    manifest = run_translation(config, command=shlex.join(["medsynth", *sys.argv[1:]]))
    print(summary_line(manifest, config.out))
    return 0


def summary_line(manifest: dict, out: str) -> str:
    volumes = (manifest.get("extra") or {}).get("volumes")
    arrays = f", {volumes['count']} volumes in {volumes['group']}" if volumes else ""
    return (f"run {manifest['run_id']}: {manifest['count']} translated slices in {len(manifest['shards'])} shards"
            f"{arrays} ({manifest['bytes'] / 2**20:.1f} MiB of shards) at {out}")
