"""Ray Train + DeepSpeed: a two-worker EMIXER run of a few steps, checkpointed, killed and resumed,
exported as a bundle whose weights moved away from their initial values."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from factory.config import TrainConfig
from factory.models.bundle import load_bundle
from factory.train.recipes import get_recipe

TINY_MODEL = {"g_width": 8, "d_width": 8, "f_width": 8, "hidden": 32, "word_embedding": 32,
              "image_feature": 32, "d_text_hidden": 32}


def tiny_config(tmp_path, **changes):
    settings = {"name": "tiny", "storage_path": str(tmp_path / "runs"), "steps": 4, "checkpoint_every": 2,
                "batch_size": 8, "workers": 2, "zero_stage": 2, "model": TINY_MODEL,
                "data": {"count": 48, "size": 32, "min_word_count": 2}, "bundle_out": str(tmp_path / "bundle")}
    settings.update(changes)
    return settings


def run_train(config_path, *overrides, timeout=300):
    return subprocess.run([sys.executable, "-m", "factory", "train", str(config_path), *overrides],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "RAY_ADDRESS": ""})


def test_two_workers_train_checkpoint_resume_and_export(tmp_path):
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    first = run_train(config_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "run tiny: step 4 of 4 (resumed from step 0)" in first.stdout
    run_dir = tmp_path / "runs" / "tiny"
    assert len([p for p in run_dir.glob("checkpoint_*") if p.is_dir()]) == 2  # steps 2 and 4 (num_to_keep=2)
    lines = first.stdout.splitlines()
    summary_line = lines[lines.index("run tiny: step 4 of 4 (resumed from step 0)") + 1]
    losses = dict(pair.split("=") for pair in summary_line.split())
    assert losses.keys() >= {"d_image", "d_report", "d_joint", "g_image", "f_word_nll"}
    assert all(math.isfinite(float(v)) for v in losses.values())

    second = run_train(config_path, "--set", "steps=6")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "run tiny: step 6 of 6 (resumed from step 4)" in second.stdout

    bundle = load_bundle(str(tmp_path / "bundle"))
    assert bundle.metadata["trained"] and bundle.metadata["metrics"]["steps"] == 6
    recipe = get_recipe("emixer")
    initial = recipe.build(bundle.model_config, seed=0)
    for name, net in bundle.nets.items():
        moved = [not torch.equal(a, b) for a, b in zip(net.state_dict().values(), initial[name].state_dict().values())
                 if a.dtype.is_floating_point]
        assert any(moved), f"{name} did not train"


def test_killed_job_resumes_from_newest_checkpoint(tmp_path):
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path, steps=80, checkpoint_every=2, bundle_out=None)))
    job = subprocess.Popen([sys.executable, "-m", "factory", "train", str(config_path)], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ""})
    snapshot_path = tmp_path / "runs" / "tiny" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 240
    # Kill as soon as Ray Train has registered a checkpoint: the run is then mid-way, whatever the load.
    while not snapshot_path.exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.1)
    assert job.poll() is None, "the job ended before it could be killed"
    os.killpg(job.pid, signal.SIGKILL)  # the driver and everything it started, without warning
    job.wait()
    assert json.loads(snapshot_path.read_text()), "no checkpoint was committed before the kill"
    resumed = run_train(config_path, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = int(resumed.stdout.split("resumed from step ")[1].split(")")[0])
    assert 2 <= start < 80 and start % 2 == 0
    assert "step 80 of 80" in resumed.stdout


def test_config_errors_name_the_file_and_field(tmp_path):
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path, zero_stage=3)))
    result = run_train(config_path, timeout=60)
    assert result.returncode == 2
    assert f"{config_path}: zero_stage: Input should be 0, 1 or 2" in result.stderr
    with pytest.raises(Exception, match="precision bf16 needs use_gpu"):
        TrainConfig.model_validate(tiny_config(tmp_path, precision="bf16"))
