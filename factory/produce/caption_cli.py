"""`medsynth caption`: a captioning bundle (medrat) writes a report for each real chest X-ray of a dataset,
into shards of (image, report, labels, json naming the study) with the production actor pool."""

from __future__ import annotations

import argparse
import shlex
import sys

from factory.config import CaptionConfig
from factory.produce.cli import add_config_flags, load_from_flags


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, CaptionConfig)


def run(args: argparse.Namespace) -> int:
    from factory.produce.runs import run_captioning

    config = load_from_flags(CaptionConfig, args)
    manifest = run_captioning(config, command=shlex.join(["medsynth", *sys.argv[1:]]))
    print(f"run {manifest['run_id']}: {manifest['count']} captioned images of {config.source} in "
          f"{len(manifest['shards'])} shards ({manifest['bytes'] / 2**20:.1f} MiB) at {config.out}")
    return 0
