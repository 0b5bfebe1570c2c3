"""`medsynth produce`: a Ray actor pool writes N samples into shards at a local or S3 URL."""

from __future__ import annotations

import argparse
import shlex
import sys

from factory.config import ProduceConfig


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML ProduceConfig; flags below override it")
    fields = ProduceConfig.model_fields
    for name, info in fields.items():
        if name == "gates":  # a list of mappings: YAML only
            continue
        flag = "--" + name.replace("_", "-")
        kind = {int: int, float: float}.get(info.annotation, str)
        parser.add_argument(flag, dest=name, type=kind, help=info.description)


def run(args: argparse.Namespace) -> int:
    from factory.config import load_config
    from factory.produce.runs import run_production

    flags = {name: getattr(args, name, None) for name in ProduceConfig.model_fields}
    flags = {name: value for name, value in flags.items() if value is not None}
    config = load_config(ProduceConfig, args.config, values=flags)
    manifest = run_production(config, command=shlex.join(["medsynth", *sys.argv[1:]]))
    print(f"run {manifest['run_id']}: {manifest['count']} samples in {len(manifest['shards'])} shards "
          f"({manifest['bytes'] / 2**20:.1f} MiB) at {config.out}")
    return 0
