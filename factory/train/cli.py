"""`medsynth train CONFIG.yaml [--set key=value ...]`: train a recipe with Ray Train + DeepSpeed.

Local Ray by default, or the cluster in RAY_ADDRESS. Running the same config again resumes the run
from its newest checkpoint.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML TrainConfig (see jobs/configs/train.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting (dotted keys for nesting, e.g. data.count=500)")


def run(args: argparse.Namespace) -> int:
    from factory.config import TrainConfig, load_config
    from factory.train.runner import train

    config = load_config(TrainConfig, args.config, args.set)
    result = train(config)
    print(summary(config, result))
    return 0


def summary(config, result) -> str:
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    lines = [f"run {config.name}: step {metrics.get('step')} of {config.steps} "
             f"(resumed from step {metrics.get('resumed_from', 0)})",
             "  " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("step", "resumed_from")),
             f"  checkpoint: {result.checkpoint.path if result.checkpoint else '-'}"]
    if config.bundle_out:
        lines.append(f"  bundle:     {config.bundle_out}")
    return "\n".join(lines)
