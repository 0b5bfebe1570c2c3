"""Ray job: measure a run against real data and write its HTML report (and metrics JSON).

    python jobs/evaluate.py --config jobs/configs/evaluate.yaml [--set count=500 ...]
    ray job submit --working-dir . -- python jobs/evaluate.py --config jobs/configs/evaluate.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir's code wins

from factory.cli import job_main  # noqa: E402
from factory.config import EvaluateConfig  # noqa: E402
from factory.evaluate.run_report import evaluate_config  # noqa: E402


def run(config: EvaluateConfig, command: str) -> str:
    result = evaluate_config(config)
    return f"report {result['html']}, metrics {result['json']}"


if __name__ == "__main__":
    raise SystemExit(job_main(EvaluateConfig, run))
