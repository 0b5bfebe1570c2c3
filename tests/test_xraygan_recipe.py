"""XRAY-GAN: CGAN and UCGAN steps through plain-torch engines (losses, updates, freezing, what the
scores and the pseudo-label threshold steer), their products and untrained bundles, and their image shards
through the actor pool (1 or 2 actors, UCGAN's quality gate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from recipe_helpers import changed, parameters, spy_on_backwards

from factory.cli import main
from factory.data.labels import CXR_LABELS
from factory.models import registry
from factory.models.bundle import load_bundle
from factory.models.spec import ImageSampling
from factory.models.xraygan.ucgan import class_targets
from factory.train.engines import torch_engines
from factory.train.recipes import get_recipe

TINY = {"xraygan-cgan": {"image_size": 32, "g_width": 4, "d_width": 4, "label_embedding": 4, "z_dim": 8},
        "xraygan-ucgan": {"image_size": 32, "g_width": 4, "d_width": 4, "c_width": 4, "t_width": 4, "t_blocks": 1,
                          "z_dim": 8}}
ORDER = {"xraygan-cgan": ["D", "G"], "xraygan-ucgan": ["D", "G", "T", "C"]}
B = 4


def _setup(model: str, seed: int = 0, **overrides):
    torch.set_num_threads(1)
    recipe = get_recipe(model)
    nets = recipe.build({**TINY[model], **overrides}, seed=seed)
    return recipe, nets, torch_engines(nets, recipe.optimizer_config)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(B, len(CXR_LABELS), generator=g) < 0.3).float()
    return {"image": torch.rand(B, 1, 32, 32, generator=g) * 2 - 1, "labels": labels,
            "targets": class_targets(labels, CXR_LABELS)}


def test_optimizer_settings_follow_the_paper():
    cgan, _, _ = _setup("xraygan-cgan")
    assert cgan.optimizer_config("G") == cgan.optimizer_config("D") == {"lr": 2e-4, "betas": (0.5, 0.999)}
    ucgan, _, _ = _setup("xraygan-ucgan")
    assert {name: ucgan.optimizer_config(name)["lr"] for name in "GDCT"} == {"G": 5e-4, "D": 1e-3, "C": 5e-4,
                                                                              "T": 5e-4}
    assert ucgan.optimizer_config("C")["weight_decay"] == 1e-3
    weights = {k: ucgan.config[k] for k in ("alpha", "beta", "gamma", "eta", "delta", "lambda", "tau", "xi")}
    assert weights == {"alpha": -0.25, "beta": 3.0, "gamma": 0.001, "eta": 0.015, "delta": 1.0, "lambda": 0.5,
                       "tau": 1.0, "xi": 0.125}
    assert ucgan.config["threshold"] == 0.8
    with pytest.raises(ValueError, match="threshold must lie in"):
        registry.make_config("xraygan-ucgan", {"threshold": 1.5})
    with pytest.raises(ValueError, match="unknown xraygan-cgan config keys"):
        registry.make_config("xraygan-cgan", {"xi": 1.0})


@pytest.mark.parametrize("model", ["xraygan-cgan", "xraygan-ucgan"])
def test_steps_give_finite_losses_change_every_network_and_repeat_exactly(model):
    runs = []
    for _ in range(2):
        recipe, nets, engines = _setup(model)
        before = parameters(nets)
        generator = torch.Generator().manual_seed(3)
        metrics = [recipe.train_step(engines, _batch(s), s, generator) for s in range(2)]
        runs.append((metrics, parameters(nets)))
    metrics, after = runs[0]
    assert all(math.isfinite(v) for m in metrics for v in m.values())
    for name in nets:
        assert changed(before, after, name), f"{name} did not change"
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(after[n][k], runs[1][1][n][k]) for n in after for k in after[n])


@pytest.mark.parametrize("model", ["xraygan-cgan", "xraygan-ucgan"])
def test_every_backward_steps_one_engine_and_the_others_are_frozen(model):
    recipe, nets, engines = _setup(model)
    calls = spy_on_backwards(engines)
    recipe.train_step(engines, _batch(), 0, torch.Generator().manual_seed(0))
    assert [name for name, _ in calls] == ORDER[model]
    assert all(trainable == {name} for name, trainable in calls)
    assert all(p.requires_grad for e in engines.values() for p in e.parameters())  # restored
    assert all(net.training for net in nets.values())


def test_ucgan_scores_steer_the_generator_alone():
    """Same seeds with and without L_reg: D steps before it, T and C learn from the same fakes, so only G
    may differ, and each score on its own moves G."""
    off = {"alpha": 0.0, "beta": 0.0, "gamma": 0.0, "eta": 0.0}
    ends = {}
    for label, weights in [("off", off), ("paper", {}), *[(k, {**off, k: 1.0}) for k in off]]:
        recipe, nets, engines = _setup("xraygan-ucgan", **weights)
        recipe.train_step(engines, _batch(), 0, torch.Generator().manual_seed(0))
        ends[label] = parameters(nets)
    for label in ("paper", *off):
        assert changed(ends["off"], ends[label], "G"), f"{label} does not reach G"
        for name in ("D", "C"):
            assert not changed(ends["off"], ends[label], name), f"{label} reached {name}"
    # T's loss is gamma x its term: off (gamma 0) and gamma 1 end apart, alpha alone leaves T as off.
    assert changed(ends["off"], ends["gamma"], "T") and not changed(ends["off"], ends["alpha"], "T")


def test_ucgan_threshold_decides_which_fakes_train_the_classifier():
    ends, kept = {}, {}
    for threshold in (0.0, 1.0):
        recipe, nets, engines = _setup("xraygan-ucgan", threshold=threshold)
        metrics = recipe.train_step(engines, _batch(), 0, torch.Generator().manual_seed(0))
        ends[threshold], kept[threshold] = parameters(nets), metrics
    assert kept[0.0]["c_kept"] == 1.0 and kept[0.0]["c_fake"] > 0
    assert kept[1.0]["c_kept"] == 0.0 and kept[1.0]["c_fake"] == 0.0
    assert changed(ends[0.0], ends[1.0], "C") and not changed(ends[0.0], ends[1.0], "G")


def test_cgan_conditioning_labels_reach_both_networks():
    recipe, nets, engines = _setup("xraygan-cgan")
    before = parameters(nets)
    recipe.train_step(engines, _batch(), 0, torch.Generator().manual_seed(0))
    after = parameters(nets)
    assert "embed.weight" in changed(before, after, "G") and "embed.weight" in changed(before, after, "D")
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    G = nets["G"].eval()
    with torch.no_grad():
        assert not torch.equal(G(z, torch.zeros(2, 9)), G(z, torch.ones(2, 9)))


def _d_losses(**overrides):
    """The loss D's backward received in one CGAN step, and the step's metrics."""
    recipe, _, engines = _setup("xraygan-cgan", **overrides)
    seen = []
    backward = engines["D"].backward
    engines["D"].backward = lambda loss: (seen.append(loss.detach().clone()), backward(loss))
    metrics = recipe.train_step(engines, _batch(), 0, torch.Generator().manual_seed(0))
    return seen[0].item(), metrics


def test_cgan_mismatch_term_enters_d_loss_with_its_weight():
    paper_loss, paper = _d_losses()
    assert "d_mismatch" not in paper
    assert paper_loss == pytest.approx(paper["d_real"] + paper["d_fake"], rel=1e-6)
    for weight in (0.5, 0.75):
        loss, metrics = _d_losses(mismatch_weight=weight)
        assert metrics["d_mismatch"] > 0
        assert loss == pytest.approx(metrics["d_real"] + (1 - weight) * metrics["d_fake"]
                                     + weight * metrics["d_mismatch"], rel=1e-6)
        # Same seeds, same networks: the real and fake terms are the paper's, the total is not.
        assert (metrics["d_real"], metrics["d_fake"]) == pytest.approx((paper["d_real"], paper["d_fake"]), rel=1e-6)
        assert loss != pytest.approx(paper_loss, rel=1e-3)


def test_cgan_mismatch_loss_counts_only_rows_whose_labels_differ():
    from factory.train.recipes.xraygan import mismatch_loss

    _, nets, _ = _setup("xraygan-cgan")
    D = nets["D"].eval()  # batch norm on running statistics: a row's logit is its own
    batch = _batch()
    images, labels = batch["image"], batch["labels"]
    wrong = labels.clone()
    wrong[1:3] = 1 - wrong[1:3]
    with torch.no_grad():
        assert mismatch_loss(D, images, labels, labels).item() == 0.0
        by_hand = torch.nn.functional.softplus(D(images[1:3], wrong[1:3])).mean()  # -log(1 - sigmoid)
        assert mismatch_loss(D, images, labels, wrong).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_cgan_one_sided_label_smoothing_moves_only_ds_real_target():
    _, paper = _d_losses()
    _, smooth = _d_losses(real_label=0.9)
    assert smooth["d_real"] > paper["d_real"]
    assert smooth["d_fake"] == pytest.approx(paper["d_fake"], rel=1e-6)
    for key, value in (("mismatch_weight", 1.0), ("mismatch_weight", True), ("real_label", 0.4)):
        with pytest.raises(ValueError, match=f"{key} must lie in"):
            registry.make_config("xraygan-cgan", {key: value})


def test_cgan_projection_starts_as_the_papers_d_and_learns_from_the_labels():
    _, paper, _ = _setup("xraygan-cgan")
    recipe, nets, engines = _setup("xraygan-cgan", projection=True)
    assert "project.weight" not in dict(paper["D"].named_parameters())
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(paper["D"](batch["image"], batch["labels"]), nets["D"](batch["image"], batch["labels"]))
    recipe.train_step(engines, batch, 0, torch.Generator().manual_seed(0))
    D = nets["D"].eval()
    assert D.project.weight.abs().sum() > 0
    with torch.no_grad():
        logits = D(batch["image"], batch["labels"])
        D.project.weight.zero_()
        assert not torch.allclose(logits, D(batch["image"], batch["labels"]))
    with pytest.raises(ValueError, match="projection must be true or false"):
        registry.make_config("xraygan-cgan", {"projection": 1})


@pytest.mark.parametrize("model", ["xraygan-cgan", "xraygan-ucgan"])
def test_products_and_untrained_bundles(model, tmp_path):
    out = tmp_path / model
    assert main(["bundle", "init", model, "--out", str(out), "--size", "32", "--width", "4", "--seed", "1"]) == 0
    bundle = load_bundle(str(out))
    assert bundle.recipe == model and bundle.label_names == list(CXR_LABELS) and bundle.vocabulary is None
    product = registry.spec(model).product(ImageSampling)
    assert registry.spec(model).product_kinds == ["images"]
    config = bundle.model_config
    z = torch.randn(3, product.z_dim(config), generator=torch.Generator().manual_seed(0))
    labels = torch.eye(9)[:3] if product.conditional else None
    images = product.generate(bundle.nets, labels, z)
    assert images.shape == (3, 32, 32) and images.dtype == np.uint8
    # Eval mode: a sample is a function of its own inputs, whatever else is in the batch.
    alone = product.generate(bundle.nets, None if labels is None else labels[1:2], z[1:2])
    assert np.array_equal(alone[0], images[1])
    if product.conditional:
        assert product.pseudo_label is None and product.threshold is None
        with pytest.raises(ValueError, match="generates images for given labels"):
            product.generate(bundle.nets, None, z)
        return
    assert product.threshold(config) == 0.8
    with pytest.raises(ValueError, match="unconditional"):
        product.generate(bundle.nets, torch.eye(9)[:3], z)
    vectors, confidence = product.pseudo_label(bundle.nets, images)
    assert vectors.dtype == confidence.dtype == np.float32 and vectors.shape == (3, 9)
    assert (vectors.sum(axis=1) == 1).all() and set(np.unique(vectors)) <= {0.0, 1.0}
    assert ((confidence >= 1 / 9) & (confidence <= 1)).all()
    again, again_confidence = product.pseudo_label(bundle.nets, images[1:2])
    assert np.array_equal(again[0], vectors[1]) and again_confidence[0] == pytest.approx(confidence[1])


def test_classifier_as_a_loss_network_keeps_its_running_statistics():
    from factory.train.recipes.xraygan import statistics_kept

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).train()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 3 + 2
    with statistics_kept(net):
        out = net(x)
    assert torch.equal(net[1].running_mean, torch.zeros(2)) and torch.equal(net[1].running_var, torch.ones(2))
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5  # normalised by the batch
    assert net[1].momentum == 0.1
    net(x)
    assert not torch.equal(net[1].running_mean, torch.zeros(2))


@pytest.mark.parametrize("model", ["xraygan-cgan", "xraygan-ucgan"])
def test_example_job_config_names_the_model_and_valid_settings(model):
    from pathlib import Path

    from factory.config import TrainConfig, load_config

    config = load_config(TrainConfig, Path(__file__).resolve().parents[1] / "jobs" / "configs" / f"train-{model}.yaml")
    assert config.recipe == model
    registry.make_config(model, config.model)  # raises on an unknown key or a bad value


@pytest.mark.parametrize("model", ["xraygan-cgan", "xraygan-ucgan"])
def test_bundles_produce_the_same_image_shards_with_one_or_two_actors(model, ray_local, tmp_path):
    """The bundle through the actor pool: byte-identical shards with 1 and 2 actors, every sample counted; for
    UCGAN, the samples whose pseudo-label confidence is below the threshold are dropped and counted."""
    import json
    import tarfile

    from factory.config import ProduceConfig
    from factory.models.cli import init_bundle
    from factory.produce.pool import produce
    from factory.produce.producers import BundleImageProducer
    from factory.produce.runs import production_spec

    count, seed = 12, 2
    init_bundle(str(tmp_path / "bundle"), model, size=32, width=4, seed=1)
    threshold = {}
    if model == "xraygan-ucgan":
        # The untrained C's confidences, computed directly for (seed, n): a threshold at their median
        # keeps some samples and drops the others.
        bundle, product = load_bundle(str(tmp_path / "bundle")), registry.spec(model).product(ImageSampling)
        z = np.stack([np.random.default_rng([seed, n]).standard_normal(product.z_dim(bundle.model_config),
                                                                          dtype=np.float32) for n in range(count)])
        _, confidence = product.pseudo_label(bundle.nets, product.generate(bundle.nets, None, torch.from_numpy(z)))
        threshold = {"threshold": float(np.median(confidence))}
        kept = [n for n in range(count) if confidence[n] >= threshold["threshold"]]
        assert 0 < len(kept) < count
    config = ProduceConfig(bundle=str(tmp_path / "bundle"), count=count, shard_size=5, batch_size=2, seed=seed,
                           out=str(tmp_path / "run"), **threshold)
    producer, spec = production_spec(config)
    runs = {actors: produce(producer, str(tmp_path / f"actors-{actors}"), spec, actors=actors, batch_size=2,
                            progress=False) for actors in (1, 2)}
    for name in [record["name"] for record in runs[1]["shards"]]:
        assert (tmp_path / "actors-1" / name).read_bytes() == (tmp_path / "actors-2" / name).read_bytes()
    with tarfile.open(tmp_path / "actors-2" / "shard-000000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert spec.sample_kind == "image" and {n.rsplit(".", 1)[1] for n in names} == {"png", "cls", "json"}
    assert meta["source"]["recipe"] == model and sum(meta["labels"].values()) >= 1
    assert ("pseudo_label" in meta) is (model == "xraygan-ucgan")
    if model == "xraygan-ucgan":
        assert runs[2]["count"] == len(kept)
        assert runs[2]["dropped"] == {BundleImageProducer.PSEUDO_LABEL_DROP: count - len(kept)}
        assert sum(sum(r["dropped"].values()) for r in runs[2]["shards"]) == count - len(kept)
    else:
        assert runs[2]["count"] == count and runs[2]["dropped"] == {}
