"""`medsynth produce`: a Ray actor pool writes N samples into shards at a local or S3 URL."""

from __future__ import annotations

import argparse
import shlex
import sys

from factory.config import ProduceConfig


def add_config_flags(parser: argparse.ArgumentParser, model, skip: tuple[str, ...] = ()) -> None:
    """`--config YAML` plus one flag per field of the pydantic `model`; flags override the file."""
    parser.add_argument("--config", help=f"YAML {model.__name__}; flags below override it")
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        kind = {int: int, float: float}.get(info.annotation, str)
        parser.add_argument(flag, dest=name, type=kind, help=info.description)


def load_from_flags(model, args: argparse.Namespace):
    """The validated config from `--config` and the flags given."""
    from factory.config import load_config

    flags = {name: getattr(args, name, None) for name in model.model_fields}
    return load_config(model, args.config, values={k: v for k, v in flags.items() if v is not None})


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, ProduceConfig, skip=("gates",))  # gates: a list of mappings, YAML only


def run(args: argparse.Namespace) -> int:
    from factory.produce.runs import run_production

    config = load_from_flags(ProduceConfig, args)
    manifest = run_production(config, command=shlex.join(["medsynth", *sys.argv[1:]]))
    print(f"run {manifest['run_id']}: {manifest['count']} samples in {len(manifest['shards'])} shards "
          f"({manifest['bytes'] / 2**20:.1f} MiB) at {config.out}")
    threshold = manifest["config"]["producer"].get("threshold")
    if threshold is not None:
        given = "--threshold" if config.threshold is not None else "the bundle's"
        print(f"pseudo-label confidence threshold {threshold:g} ({given}): "
              f"{sum(manifest['dropped'].values())} samples dropped ({_drops(manifest['dropped'])})")
    return 0


def _drops(dropped: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {count}" for reason, count in dropped.items()) or "none"
