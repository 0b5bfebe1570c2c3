"""DUIIT recipe: steps through plain-torch engines (losses, updates, freezing, image pool, learning-rate
decay, restoring the pools), the learning-rate hook on DeepSpeed engines, and a two-worker Ray Train +
DeepSpeed run of a few steps, checkpointed (image pools included) and exported."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from gloo_script import run_as_rank_zero
from recipe_helpers import changed, parameters, spy_on_backwards
from test_train import tiny_config, train_in_session

from factory.models.bundle import load_bundle
from factory.train.engines import apply_learning_rates, torch_engines
from factory.train.recipes import get_recipe
from factory.train.recipes.duiit import ImagePool, linear_decay

TINY = {"image_size": 32, "g_width": 4, "g_blocks": 1, "d_width": 4, "pool_size": 3}
B = 4


def _setup(seed: int = 0, **overrides):
    torch.set_num_threads(1)
    recipe = get_recipe("duiit")
    nets = recipe.build({**TINY, **overrides}, seed=seed)
    return recipe, nets, torch_engines(nets, recipe.optimizer_config)


def _batch(seed: int = 0, sources=("mri", "pet")):
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for modality in ("ct", *sources):
        batch[modality] = torch.rand(B, 1, 32, 32, generator=g) * 2 - 1
        batch[f"{modality}_age"] = torch.randn(B, generator=g)
    return batch


def test_steps_give_finite_losses_change_every_network_and_repeat_exactly():
    runs = []
    for _ in range(2):
        recipe, nets, engines = _setup()
        before = parameters(nets)
        generator = torch.Generator().manual_seed(3)
        metrics = [recipe.train_step(engines, _batch(s), s, generator) for s in range(3)]
        runs.append((metrics, parameters(nets), recipe.state_dict()))
    metrics, after, pools = runs[0]
    per_source = {"g_adv", "f_adv", "cycle", "age", "d_ct", "d_source"}
    assert set(metrics[0]) == {f"{s}_{k}" for s in ("mri", "pet") for k in per_source} | {
        "p_loss", "p_ct", "p_translated"}
    assert all(math.isfinite(v) for m in metrics for v in m.values())
    for name in nets:
        assert changed(before, after, name), f"{name} did not change"
    # Same seeds, same everything: initial weights from the seed, pool choices from the generator.
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(after[n][k], runs[1][1][n][k]) for n in after for k in after[n])
    assert pools.keys() == runs[1][2].keys() and all(torch.equal(pools[k], runs[1][2][k]) for k in pools)
    # What a resumed worker does with its checkpoint's recipe state: a fresh recipe holds the same pools.
    resumed, _, _ = _setup()
    resumed.load_state_dict(pools)
    assert resumed.state_dict().keys() == pools.keys()
    assert all(torch.equal(resumed.state_dict()[k], pools[k]) for k in pools)


def test_every_backward_steps_one_engine_and_the_others_are_frozen():
    recipe, nets, engines = _setup(sources=["mri"])
    calls = spy_on_backwards(engines)
    recipe.train_step(engines, _batch(sources=("mri",)), 0, torch.Generator().manual_seed(0))
    assert [name for name, _ in calls] == ["T_mri", "D_mri", "P"]
    assert all(trainable == {name} for name, trainable in calls)
    assert all(p.requires_grad for e in engines.values() for p in e.parameters())  # restored


def test_age_term_steers_only_the_translators():
    """λ (the prediction term) enters the translator loss; the discriminators and P update alike."""
    results = []
    for weight in (0.0, 0.001):
        recipe, nets, engines = _setup(lambda_pred=weight, sources=["pet"])
        recipe.train_step(engines, _batch(sources=("pet",)), 0, torch.Generator().manual_seed(0))
        results.append(parameters(nets))
    without, with_age = results
    assert changed(without, with_age, "T_pet")
    assert not changed(without, with_age, "D_pet") and not changed(without, with_age, "P")


def test_missing_ages_are_left_out_of_the_age_losses():
    recipe, _, engines = _setup(sources=["mri"])
    batch = _batch(sources=("mri",))
    batch["mri_age"][:] = float("nan")
    batch["ct_age"][0] = float("nan")
    metrics = recipe.train_step(engines, batch, 0, torch.Generator().manual_seed(0))
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["mri_age"] == 0.0 and metrics["p_translated"] == 0.0


def test_image_pool_fills_then_swaps_half_the_time_deterministically():
    pool = ImagePool(2)
    images = torch.arange(3.0).view(3, 1, 1, 1)
    out = pool.query(images, torch.Generator().manual_seed(0))
    assert out[:2].flatten().tolist() == [0.0, 1.0] and len(pool) == 2  # filling: stored and returned
    assert out[2].item() in (0.0, 1.0, 2.0)

    pool = ImagePool(50)
    generator = torch.Generator().manual_seed(1)
    pool.query(-torch.ones(50, 1, 1, 1), generator)  # full of "old" images (-1)
    fresh = torch.arange(1.0, 2001.0).view(2000, 1, 1, 1)
    returned = pool.query(fresh, generator).flatten()
    from_history = (returned != fresh.flatten()).float().mean().item()
    assert 0.45 < from_history < 0.55
    assert len(pool) == 50 and set(pool.state().flatten().tolist()) <= set(fresh.flatten().tolist()) | {-1.0}

    again = ImagePool(50)
    generator = torch.Generator().manual_seed(1)
    again.query(-torch.ones(50, 1, 1, 1), generator)
    assert torch.equal(again.query(fresh, generator).flatten(), returned)

    restored = ImagePool(50)
    restored.load(pool.state())
    assert torch.equal(restored.state(), pool.state())
    assert ImagePool(0).query(fresh, generator) is fresh


def test_learning_rates_hold_then_decay_linearly_and_reach_the_optimisers():
    assert [linear_decay(s, 10, 0.5) for s in range(10)] == pytest.approx([1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
    assert linear_decay(3, 4, 1.0) == 1.0
    recipe, nets, engines = _setup(sources=["mri"])
    assert recipe.optimizer_config("T_mri") == {"lr": 2e-4, "betas": (0.5, 0.999)}
    assert recipe.optimizer_config("D_mri") == {"lr": 2e-4, "betas": (0.5, 0.999)}
    assert recipe.optimizer_config("P") == {"lr": 1e-3, "betas": (0.9, 0.999)}
    rates = recipe.learning_rates(7, 10)
    assert rates == pytest.approx({"T_mri": 1.2e-4, "D_mri": 1.2e-4, "P": 6e-4})
    apply_learning_rates(engines, rates)
    assert {n: e.lr for n, e in engines.items()} == pytest.approx(rates)
    assert all(g["lr"] == pytest.approx(rates["P"]) for g in engines["P"].optimizer.param_groups)
    # A zero rate leaves the weights where they are: the optimisers read the rate they were given.
    apply_learning_rates(engines, {name: 0.0 for name in engines})
    before = parameters(nets)
    recipe.train_step(engines, _batch(sources=("mri",)), 0, torch.Generator().manual_seed(0))
    assert not any(changed(before, parameters(nets), name) for name in nets)


def test_batch_maps_intensities_and_normalises_ages():
    from factory.train.data import DataPart, TrainingData

    def part(images, ages):
        n = len(ages)
        return DataPart(images=images, labels=torch.tensor(ages).view(n, 1), label_names=("age",),
                        study_ids=[str(i) for i in range(n)], reports=[""] * n, has_report=np.zeros(n, bool))

    data = TrainingData(parts={"ct": part(torch.full((2, 1, 32, 32), 50.0), [35.0, 75.0]),
                               "pet": part(torch.full((2, 1, 32, 32), 0.25), [55.0, 95.0])})
    recipe = get_recipe("duiit")
    config = recipe.model_config({"sources": ["pet"], "g_width": 4}, data)
    assert config["image_size"] == 32 and recipe.data_parts({"sources": ["pet"]}) == ("ct", "pet")
    recipe.build(config)
    batch = recipe.batch(data, {"ct": np.array([1]), "pet": np.array([0, 1])})
    assert batch["ct"].shape == (1, 1, 32, 32) and batch["ct"].flatten()[0].item() == pytest.approx(0.0)
    assert batch["pet"].flatten()[0].item() == pytest.approx(-0.5)
    assert batch["ct_age"].tolist() == pytest.approx([1.0]) and batch["pet_age"].tolist() == pytest.approx([0.0, 2.0])


DEEPSPEED_LR = r"""
import sys, torch, torch.distributed as dist
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[1], rank=0, world_size=1)
from factory.config import TrainConfig
from factory.train.engines import DeepSpeedEngine, deepspeed_config
for stage in (0, 1, 2):
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 1)
    config = TrainConfig(name="lr", storage_path="unused", steps=1, batch_size=1, zero_stage=stage)
    engine = DeepSpeedEngine(net, torch.optim.Adam(net.parameters(), lr=1.0), deepspeed_config(config))
    engine.set_lr(1e-3)
    before = [p.detach().clone() for p in engine.parameters()]
    engine.backward(engine(torch.ones(1, 8)).sum())
    engine.step()
    moved = max((p.detach() - b).abs().max().item() for p, b in zip(engine.parameters(), before))
    print("stage", stage, engine.lr, moved, flush=True)
"""


def test_deepspeed_engines_take_the_learning_rate_at_every_zero_stage():
    """Adam's first step moves each weight by about lr: 1e-3 as set, not the 1.0 it was built with."""
    result = run_as_rank_zero(DEEPSPEED_LR)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith("stage")]
    assert [int(line[1]) for line in lines] == [0, 1, 2]
    for _, stage, lr, moved in lines:
        assert float(lr) == pytest.approx(1e-3), stage
        assert float(moved) == pytest.approx(1e-3, rel=0.01), stage


TINY_DUIIT = {"g_width": 4, "g_blocks": 1, "d_width": 4, "pool_size": 4}


def test_two_workers_train_checkpoint_and_export(ray_local, tmp_path):
    """One Ray run: the runner's resume is the EMIXER tests' subject (tests/test_train.py), and the recipe's
    own state (its image pools) is restored in process above; a second Ray run here took about a minute."""
    settings = tiny_config(tmp_path, name="tiny-duiit", recipe="duiit", model=TINY_DUIIT, batch_size=4,
                           data={"source": "phantom-brain", "counts": {"ct": 8, "mri": 8, "pet": 8}, "size": 32})
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    first = train_in_session(config_path)
    head = "run tiny-duiit: step 4 of 4 (resumed from step 0)"
    assert head in first
    lines = first.splitlines()
    metrics = {k: float(v) for k, v in (pair.split("=") for pair in lines[lines.index(head) + 1].split())}
    assert metrics.keys() >= {"mri_g_adv", "mri_cycle", "mri_d_ct", "pet_age", "pet_d_source", "p_loss"}
    assert all(math.isfinite(v) for v in metrics.values())
    # Step 3 of 4 with the decay from the half-way step: half of each paper rate, as the engines hold it.
    assert metrics["lr_T_mri"] == pytest.approx(1e-4) and metrics["lr_P"] == pytest.approx(5e-4)

    run_dir = tmp_path / "runs" / "tiny-duiit"
    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 2  # steps 2 and 4
    for rank in (0, 1):
        pools = load_file(checkpoints[-1] / f"recipe_state_rank{rank}.safetensors")
        assert pools["pool.ct_from_mri"].shape == (4, 1, 32, 32)  # the image pools travel with the checkpoint
    assert json.loads((checkpoints[-1] / "runner_state.json").read_text())["step"] == 4

    bundle = load_bundle(str(tmp_path / "bundle"))
    assert bundle.recipe == "duiit" and bundle.metadata["trained"] and bundle.metadata["metrics"]["steps"] == 4
    assert bundle.vocabulary is None and bundle.label_names == ["age"]
    config = bundle.model_config
    assert config["sources"] == ["mri", "pet"] and config["image_size"] == 32
    assert (config["age_centre"], config["age_scale"], config["ct_window"]) == (55.0, 20.0, [-20.0, 120.0])
    assert bundle.metadata["training_data"]["parts"]["ct"]["count"] == 8
    initial = get_recipe("duiit").build(config, seed=0)
    for name, net in bundle.nets.items():
        moved = [not torch.equal(a, b) for a, b in zip(net.state_dict().values(), initial[name].state_dict().values())
                 if a.dtype.is_floating_point]
        assert any(moved), f"{name} did not train"
