"""What a team that installed only the base package does with a run: stream it (numpy arrays, no
torch) and inspect it. A script, run by tests/test_install.py in a subprocess, either in a fresh venv
with the base install or in the project's venv with every extra's packages blocked:

    python tests/base_consumer.py RUN --labels A,B --train-config jobs/configs/train.yaml [--block torch,...]

It prints what it saw as one JSON line, last."""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import io
import json
import sys

# Packages of the extras that must never load on these paths, blocked or not.
HEAVY = {"torch", "torchvision", "ray", "deepspeed", "pyarrow", "zarr", "matplotlib", "torchmetrics"}


class Block(importlib.abc.MetaPathFinder):
    """Make these top-level packages look uninstalled, as they are in a base install."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--labels", required=True)
    parser.add_argument("--block", default="")
    parser.add_argument("--train-config", required=True, help="a valid training config (jobs/configs/train.yaml)")
    args = parser.parse_args()
    if args.block:
        sys.meta_path.insert(0, Block(set(args.block.split(","))))

    import numpy as np

    from factory.cli import build_parser
    from factory.cli import main as medsynth
    from factory.errors import FactoryError
    from factory.stream import collate, mix, open_run

    build_parser()  # imports every command's module, as `medsynth inspect` does
    labels = args.labels.split(",")
    samples = list(open_run(args.run, arrays="numpy", label_names=labels))
    batch = next(iter(open_run(args.run, arrays="numpy", label_names=labels).batched(4, collation_fn=collate)))
    mixed = list(mix(open_run(args.run, arrays="numpy", label_names=labels),
                     open_run(args.run, arrays="numpy", label_names=labels), ratio=0.5, seed=1))
    try:
        open_run(args.run)
        default_refusal = None
    except FactoryError as err:
        default_refusal = str(err)
    inspect_rc = medsynth(["inspect", args.run])
    with contextlib.redirect_stderr(io.StringIO()) as train_err:  # a command of an extra not installed
        train_rc = medsynth(["train", args.train_config, "--set", "steps=1"])
    print(json.dumps({
        "count": len(samples),
        "keys": [s["__key__"] for s in samples],
        "image_types": sorted({type(s["image"]).__name__ for s in samples}),
        "image_dtype": str(samples[0]["image"].dtype),
        "image_sum": float(sum(np.float64(s["image"].sum()) for s in samples)),
        "batch_shape": list(batch["image"].shape),
        "mixed": len(mixed),
        "default_refusal": default_refusal,
        "inspect_rc": inspect_rc,
        "train": [train_rc, train_err.getvalue().strip()],
        "heavy_loaded": sorted({m.split(".")[0] for m in sys.modules} & HEAVY),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
