"""Justify's recipe through plain-torch engines: each stage steps its own networks, one backward per
engine with every other engine frozen, finite losses, exact repeats for a seed, the schedule's limit
and eq. 1's epoch weighting."""

from __future__ import annotations

import math
import re

import pytest
import torch
import yaml
from justify_helpers import phantom_data, run_steps, setup
from recipe_helpers import changed, parameters, spy_on_backwards

from factory.cli import main
from factory.models.justify.config import NET_NAMES, STAGE_NETS
from factory.train.recipes.justify import diagnosis_weight

CALLS = {"arae": ["AE", "Cz", "Cz", "Gz"], "stage1": ["D1", "G1"], "stage2": ["D2", "G2"], "inverse": ["I"]}


@pytest.fixture(scope="module")
def data():
    return phantom_data(16)


def test_each_stage_trains_its_own_networks_one_engine_per_backward(data):
    recipe, nets, engines = setup(data)
    calls = spy_on_backwards(engines)
    for step, stage in enumerate(("arae", "stage1", "stage2", "inverse")):
        before = parameters(nets)
        metrics = run_steps(recipe, engines, data, range(step, step + 1))[0]
        assert metrics["stage"] == step and all(math.isfinite(v) for v in metrics.values())
        assert [name for name, _ in calls] == CALLS[stage]
        assert all(trainable == {name} for name, trainable in calls)  # every other engine frozen
        after = parameters(nets)
        assert {name for name in NET_NAMES if changed(before, after, name)} == set(STAGE_NETS[stage])
        calls.clear()


def test_steps_repeat_exactly_for_a_seed_and_ca_adds_its_kl_term(data):
    runs = []
    for _ in range(2):
        recipe, nets, engines = setup(data, conditioning_augmentation=True)
        runs.append((run_steps(recipe, engines, data, range(4)), parameters(nets)))
    assert runs[0][0] == runs[1][0]
    assert all(not changed(runs[0][1], runs[1][1], name) for name in NET_NAMES)
    assert runs[0][0][1]["kl1"] > 0 and runs[0][0][2]["kl2"] > 0


def test_a_run_longer_than_the_schedule_is_refused(data):
    recipe, _, _ = setup(data)
    assert recipe.learning_rates(0, 4)["G1"] == 2e-4
    with pytest.raises(ValueError, match=r"steps \(5\) exceed the justify schedule's 4"):
        recipe.learning_rates(0, 5)


def test_the_diagnosis_loss_grows_with_the_inverse_stages_epoch(data):
    recipe, _, _ = setup(data)
    recipe.studies = 16
    assert [recipe._epoch(within, 4) for within in (0, 3, 4, 8)] == [0, 0, 1, 2]
    assert [diagnosis_weight(e) for e in (0, 1, 9)] == [0.0, math.log10(2), 1.0]


def test_a_resumed_run_continues_the_stage_it_was_in_exactly(data):
    """What a checkpoint holds (the networks' and optimisers' state, the recipe's steps done) is enough:
    steps 2-3 after a restart at step 2 equal those of an uninterrupted run."""
    recipe, nets, engines = setup(data)
    straight = run_steps(recipe, engines, data, range(4))
    recipe, nets, engines = setup(data)
    run_steps(recipe, engines, data, range(2))
    saved = ({name: net.state_dict() for name, net in nets.items()},
             {name: engine.optimizer.state_dict() for name, engine in engines.items()})
    state = recipe.state_dict()
    recipe, nets, engines = setup(data, seed=1)  # other initial weights: all must come from the checkpoint
    recipe.load_state_dict(state)
    assert recipe.steps_done == 2 and recipe.export_metadata(data)["training_data"]["stages_trained"] == [
        "arae", "stage1"]
    for name in nets:
        nets[name].load_state_dict(saved[0][name])
        engines[name].optimizer.load_state_dict(saved[1][name])
    assert run_steps(recipe, engines, data, range(2, 4)) == straight[2:]


@pytest.mark.parametrize("model, message", [
    ({"schedule": {"arae": 1, "stage1": 1, "stage2": 1, "inverse": 1}}, r"model: steps \(5\) exceed the justify "
                                                                        r"schedule's 4"),
    ({"code_size": 3}, r"model: unknown justify config keys: \['code_size'\]"),
], ids=["steps-past-schedule", "unknown-model-key"])
def test_medsynth_train_refuses_a_bad_justify_config_in_one_line_before_anything_starts(model, message, tmp_path,
                                                                                          capsys):
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump({"name": "j", "recipe": "justify", "storage_path": str(tmp_path / "runs"),
                                           "steps": 5, "model": model}))
    assert main(["train", str(config_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert re.search(message, error) and len(error.splitlines()) == 1
    assert not (tmp_path / "runs" / "j").exists()  # no data cached, no Ray run
