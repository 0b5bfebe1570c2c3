"""XRAY-GAN under `medsynth train`: per recipe, one two-worker Ray Train + DeepSpeed (ZeRO-2) run of
two steps on phantom chest X-rays, checkpointed and exported; resuming it under the same name (a
second Ray Train run per recipe, which CI's budget does not carry) is marked slow. The runner's resume
is tested for every recipe by tests/test_train.py; these recipes keep no state of their own."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from test_train import tiny_config, train_in_session

from factory.data.labels import CXR_LABELS
from factory.models.bundle import load_bundle
from factory.train.recipes import get_recipe

TINY = {"xraygan-cgan": {"g_width": 4, "d_width": 4, "label_embedding": 4, "z_dim": 8},
        "xraygan-ucgan": {"g_width": 4, "d_width": 4, "c_width": 4, "t_width": 4, "t_blocks": 1, "z_dim": 8}}
METRICS = {"xraygan-cgan": {"d_real", "d_fake", "g_adv"},
           "xraygan-ucgan": {"d_real", "d_fake", "g_adv", "g_is", "g_mmd", "g_style", "g_transfer", "t_transfer",
                             "c_real", "c_fake", "c_kept"}}


def _metrics(printed: str, head: str) -> dict[str, float]:
    lines = printed.splitlines()
    return {k: float(v) for k, v in (pair.split("=") for pair in lines[lines.index(head) + 1].split())}


def _train(model: str, tmp_path) -> tuple[str, object]:
    settings = tiny_config(tmp_path, name=model, recipe=model, model=TINY[model], batch_size=4, steps=2,
                           checkpoint_every=1, data={"count": 16, "size": 32})
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    return train_in_session(config_path), config_path


def _checkpoints(tmp_path, model: str) -> list:
    return sorted(p for p in (tmp_path / "runs" / model).glob("checkpoint_*") if p.is_dir())


def _check_bundle(tmp_path, model: str, steps: int) -> None:
    bundle = load_bundle(str(tmp_path / "bundle"))
    assert bundle.recipe == model and bundle.metadata["trained"] and bundle.metadata["metrics"]["steps"] == steps
    assert bundle.label_names == list(CXR_LABELS) and bundle.vocabulary is None
    assert bundle.metadata["training_data"]["label_prior"]
    initial = get_recipe(model).build(bundle.model_config, seed=0)
    for name, net in bundle.nets.items():
        moved = [not torch.equal(a, b) for a, b in zip(net.state_dict().values(), initial[name].state_dict().values())
                 if a.dtype.is_floating_point]
        assert any(moved), f"{name} did not train"


@pytest.mark.parametrize("model", ["xraygan-cgan", "xraygan-ucgan"])
def test_two_workers_train_checkpoint_and_export(model, ray_local, tmp_path):
    printed, _ = _train(model, tmp_path)
    head = f"run {model}: step 2 of 2 (resumed from step 0)"
    assert head in printed
    metrics = _metrics(printed, head)
    assert metrics.keys() >= METRICS[model] and all(math.isfinite(v) for v in metrics.values())
    checkpoints = _checkpoints(tmp_path, model)
    assert len(checkpoints) == 2  # steps 1 and 2, every engine's ZeRO partitions in each
    assert json.loads((checkpoints[-1] / "runner_state.json").read_text())["step"] == 2
    assert {p.name for p in checkpoints[-1].iterdir()} >= {"G", "D"}
    _check_bundle(tmp_path, model, steps=2)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["xraygan-cgan", "xraygan-ucgan"])
def test_a_run_started_again_with_more_steps_resumes_from_its_newest_checkpoint(model, ray_local, tmp_path):
    _, config_path = _train(model, tmp_path)
    resumed = train_in_session(config_path, "--set", "steps=3")
    assert f"run {model}: step 3 of 3 (resumed from step 2)" in resumed
    assert json.loads((_checkpoints(tmp_path, model)[-1] / "runner_state.json").read_text())["step"] == 3
    _check_bundle(tmp_path, model, steps=3)
