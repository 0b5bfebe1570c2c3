"""Ray job: train a recipe with Ray Train + DeepSpeed and export a bundle.

    python jobs/train.py --config jobs/configs/train.yaml [--set steps=100 ...]
    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/train.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir's code wins

from factory.cli import job_main  # noqa: E402
from factory.config import TrainConfig  # noqa: E402
from factory.train.cli import summary  # noqa: E402
from factory.train.runner import train  # noqa: E402


def run(config: TrainConfig, command: str) -> str:
    return summary(config, train(config))


if __name__ == "__main__":
    raise SystemExit(job_main(TrainConfig, run))
