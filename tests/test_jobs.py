"""The Ray job entrypoints: each example config validates, and a bad one fails in one line."""

import subprocess
import sys
from pathlib import Path

import pytest

from factory.config import BenchConfig, EvaluateConfig, ProduceConfig, TrainConfig, TranslateConfig, load_config

JOBS = Path(__file__).resolve().parents[1] / "jobs"
MODELS = {"produce": ProduceConfig, "train": TrainConfig, "bench": BenchConfig, "translate": TranslateConfig,
          "evaluate": EvaluateConfig}


CONFIGS = sorted(p.name for p in (JOBS / "configs").glob("*.yaml"))


def job_of(config_name: str) -> str:
    """A config's job: its name up to the first dash (train.yaml and train-duiit.yaml are both train's)."""
    return config_name.removesuffix(".yaml").split("-", 1)[0]


@pytest.mark.parametrize("config", CONFIGS)
def test_example_config_validates_and_entrypoint_exists(config):
    job = job_of(config)
    load_config(MODELS[job], JOBS / "configs" / config)
    assert (JOBS / f"{job}.py").is_file()


def test_jobs_and_configs_match():
    assert {p.stem for p in JOBS.glob("*.py")} == {job_of(c) for c in CONFIGS} == set(MODELS)
    assert all(f"{job}.yaml" in CONFIGS for job in MODELS)  # each job has its main example


def test_bad_setting_fails_in_one_line():
    result = subprocess.run([sys.executable, str(JOBS / "train.py"), "--config", str(JOBS / "configs" / "train.yaml"),
                             "--set", "workers=0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("train.yaml: workers: Input should be greater than 0")


def test_bench_job_accepts_every_benchmark():
    from typing import get_args

    from factory.bench.cli import BENCHMARKS

    assert set(get_args(BenchConfig.model_fields["benchmark"].annotation)) == set(BENCHMARKS)
