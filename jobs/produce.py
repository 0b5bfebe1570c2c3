"""Ray job: produce labelled samples into shards with an actor pool.

    python jobs/produce.py --config jobs/configs/produce.yaml [--set count=1000 ...]
    ray job submit --working-dir . -- python jobs/produce.py --config jobs/configs/produce.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir's code wins

from factory.cli import job_main  # noqa: E402
from factory.config import ProduceConfig  # noqa: E402
from factory.produce.runs import run_production  # noqa: E402


def run(config: ProduceConfig, command: str) -> str:
    manifest = run_production(config, command=command)
    return f"run {manifest['run_id']}: {manifest['count']} samples, {len(manifest['shards'])} shards at {config.out}"


if __name__ == "__main__":
    raise SystemExit(job_main(ProduceConfig, run))
