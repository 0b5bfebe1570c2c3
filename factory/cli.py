"""`medsynth` command line. Each command lives beside the code it drives; this file only routes (and
sets up logging through factory.logs).

A command module exposes `configure(parser)` and `run(args) -> int`, and keeps its top-level
imports light so that `medsynth --help` stays fast; heavy imports (torch, ray) go inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from factory.errors import FactoryError
from factory.logs import configure_logging

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("factory.demo", "run the whole chain on built-in phantom data, locally"),
    "data": ("factory.data.cli", "write phantom datasets in the layouts of real ones"),
    "train": ("factory.train.cli", "train a recipe with Ray Train + DeepSpeed (resumes by run name)"),
    "bundle": ("factory.models.cli", "write an untrained generator bundle of a recipe's shape"),
    "produce": ("factory.produce.cli", "produce labelled samples into shards with a Ray actor pool"),
    "translate": ("factory.produce.translate_cli",
                  "translate MRI/PET slices and volumes into CT shards and a Zarr group with a Ray actor pool"),
    "caption": ("factory.produce.caption_cli",
                "write a report for each real chest X-ray of a dataset into shards with a Ray actor pool"),
    "explain": ("factory.produce.explain_cli",
                "diagnose chest X-rays, justify each diagnosis in words and draw its nearest alternative"),
    "export-nifti": ("factory.produce.nifti", "write a translation run's whole volumes as NIfTI files (.nii.gz)"),
    "evaluate": ("factory.evaluate.cli", "judge, run report (HTML), augmentation study"),
    "inspect": ("factory.produce.inspect", "summarise and verify a run, or extract one sample"),
    "bench": ("factory.bench.cli", "run a benchmark and write its JSON results"),
}
# The extra (pyproject.toml) that brings what each command needs beyond the base install; `inspect`
# needs none (it asks for [volumes] itself where a run has Zarr volumes).
COMMAND_EXTRAS = {"demo": "all", "data": "produce", "train": "train", "bundle": "produce", "produce": "produce",
                  "translate": "produce", "caption": "produce", "explain": "produce", "export-nifti": "volumes",
                  "evaluate": "eval", "bench": "all"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsynth",
        description="MedSynth Factory: train medical generators on Ray, mass-produce labelled synthetic data.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args._run(args) or 0)
    except FactoryError as err:
        print(f"medsynth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] == "factory" or args.command not in COMMAND_EXTRAS:
            raise
        print(f"medsynth {args.command}: error: {err.name} is not installed; this command needs "
              f"pip install 'medsynth-factory[{COMMAND_EXTRAS[args.command]}]'", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and friends
        sys.stderr.close()
        return 0
    except Exception as err:  # an object store's failure raised outside factory.storage's functions
        from factory.storage import remote_problem

        problem = remote_problem(err)
        if problem is None:
            raise
        print(f"medsynth {args.command}: error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medsynth {args.command}: interrupted; committed shards are kept, run again to resume",
              file=sys.stderr)
        return 130


def job_main(config_model, runner, argv: list[str] | None = None) -> int:
    """Shared body of the Ray job entrypoints in jobs/: `--config YAML [--set key=value ...]`, validate,
    run, print a one-line result; user errors end as one line and exit code 2."""
    from factory.config import load_config

    parser = argparse.ArgumentParser(description=config_model.__doc__)
    parser.add_argument("--config", required=True, help="YAML file of settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        config = load_config(config_model, args.config, args.set)
        print(runner(config, " ".join(["python", *sys.argv])))
    except FactoryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
