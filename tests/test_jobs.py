"""The Ray job entrypoints: each example config validates, and a bad one fails in one line."""

import subprocess
import sys
from pathlib import Path

import pytest

from factory.config import BenchConfig, ProduceConfig, TrainConfig, load_config

JOBS = Path(__file__).resolve().parents[1] / "jobs"
MODELS = {"produce": ProduceConfig, "train": TrainConfig, "bench": BenchConfig}


@pytest.mark.parametrize("job", sorted(MODELS))
def test_example_config_validates_and_entrypoint_exists(job):
    load_config(MODELS[job], JOBS / "configs" / f"{job}.yaml")
    assert (JOBS / f"{job}.py").is_file()


def test_jobs_and_configs_match():
    assert {p.stem for p in JOBS.glob("*.py")} == {p.stem for p in (JOBS / "configs").glob("*.yaml")} == set(MODELS)


def test_bad_setting_fails_in_one_line():
    result = subprocess.run([sys.executable, str(JOBS / "train.py"), "--config", str(JOBS / "configs" / "train.yaml"),
                             "--set", "workers=0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("train.yaml: workers: Input should be greater than 0")
