"""Ray job: run one capacity or learnability benchmark on the cluster's nodes.

    python jobs/bench.py --config jobs/configs/bench.yaml [--set benchmark=produce ...]
    ray job submit --working-dir . -- python jobs/bench.py --config jobs/configs/bench.yaml
"""

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir's code wins

from factory.bench.cli import BENCHMARKS  # noqa: E402
from factory.cli import job_main  # noqa: E402
from factory.config import BenchConfig  # noqa: E402


def run(config: BenchConfig, command: str) -> str:
    status = importlib.import_module(BENCHMARKS[config.benchmark][0]).main(list(config.args))
    return f"benchmark {config.benchmark} finished with status {status or 0}"


if __name__ == "__main__":
    raise SystemExit(job_main(BenchConfig, run))
