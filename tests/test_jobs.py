"""The Ray job entrypoints: each example config validates, and a bad one fails in one line."""

import subprocess
import sys
from pathlib import Path

import pytest

from factory.cli import job_main, main
from factory.config import (MAX_COUNT, MAX_SHARDS, BenchConfig, EvaluateConfig, ProduceConfig, TrainConfig,
                            TranslateConfig, load_config)
from factory.errors import BadInputError
from factory.produce.runs import label_policy

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


def test_bad_yaml_fails_in_one_line_naming_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: run\ncount: [1, 2\nseed: 3\n")  # the list is never closed
    expected = (f"{bad}: not valid YAML: line 3, column 5: expected ',' or ']', but got ':' "
                "(while parsing a flow sequence from line 2, column 8)")
    with pytest.raises(BadInputError) as raised:
        load_config(ProduceConfig, bad)
    assert str(raised.value) == expected
    assert main(["produce", "--config", str(bad)]) == 2
    assert capsys.readouterr().err == f"medsynth produce: error: {expected}\n"
    assert job_main(ProduceConfig, lambda config, command: pytest.fail("ran a bad config"), ["--config", str(bad)]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"
    with pytest.raises(BadInputError) as raised:  # a label-count file reads the same way
        label_policy(str(bad))
    assert str(raised.value) == expected.replace("not valid YAML", "not valid YAML/JSON")


def test_an_override_that_is_not_yaml_fails_in_one_line(capsys):
    train = str(JOBS / "configs" / "train.yaml")
    assert main(["train", train, "--set", "steps=["]) == 2
    assert capsys.readouterr().err == (f"medsynth train: error: {train}: override 'steps=[': not a valid YAML value: "
                                       "line 1, column 2: expected the node content, but found '<stream end>' "
                                       "(while parsing a flow node from line 1, column 2)\n")


def test_a_run_past_the_documented_maximum_is_refused_naming_the_field():
    run = {"source": "phantom-cxr", "out": "runs/x"}
    largest = load_config(ProduceConfig, None, values={**run, "count": MAX_COUNT, "shard_size": MAX_COUNT // MAX_SHARDS})
    assert largest.count == 10**9 and largest.shard_size == 10**4
    with pytest.raises(BadInputError, match=r"^command line: count: Input should be less than or equal to 1000000000$"):
        load_config(ProduceConfig, None, values={**run, "count": MAX_COUNT + 1})
    with pytest.raises(BadInputError, match=r"^command line: shard_size: Value error, 1000000000 samples in shards of "
                                            r"100 make 10000000 shards, more than the 100000 one run takes; use a "
                                            r"shard size of at least 10000$"):
        load_config(ProduceConfig, None, values={**run, "count": MAX_COUNT, "shard_size": 100})


def test_bench_job_accepts_every_benchmark():
    from typing import get_args

    from factory.bench.cli import BENCHMARKS

    assert set(get_args(BenchConfig.model_fields["benchmark"].annotation)) == set(BENCHMARKS)
