"""EMIXER training step through plain-torch engines: losses, updates, partial labels, freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recipe_helpers import parameters

from factory.data.text.vocab import Vocabulary
from factory.train.engines import Engine, TorchEngine, frozen, torch_engines
from factory.train.recipes import get_recipe
from factory.train.recipes.emixer import labelled_mask, make_batch

TINY = dict(image_size=32, g_width=4, d_width=4, f_width=4, class_embedding=8, vocab_size=20, max_sentences=3,
            max_words=5, image_feature=8, word_embedding=8, hidden=8, word_layers=1, d_text_hidden=8)
B = 4


def _setup(seed: int = 0, **overrides):
    torch.set_num_threads(1)
    recipe = get_recipe("emixer")
    nets = recipe.build({**TINY, **overrides}, seed=seed)
    return recipe, nets, torch_engines(nets, recipe.optimizer_config)


def _batch(labelled, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(B, 1, 32, 32, generator=g) * 2 - 1,
            "labels": (torch.rand(B, 9, generator=g) < 0.4).float(),
            "labelled": torch.tensor(labelled),
            "report": torch.randint(4, 20, (B, 3, 5), generator=g)}


def test_optimizer_settings_follow_the_paper():
    recipe, _, engines = _setup()
    assert recipe.optimizer_config("G") == {"lr": 5e-5, "betas": (0.0, 0.999)}
    assert recipe.optimizer_config("F")["lr"] == 5e-5
    for name in ("D_image", "D_report", "D_joint"):
        assert recipe.optimizer_config(name)["lr"] == 2e-4
    assert all(isinstance(e, Engine) for e in engines.values())


def test_train_steps_give_finite_losses_change_every_network_and_repeat_exactly():
    runs = []
    for _ in range(2):
        recipe, nets, engines = _setup()
        before = parameters(nets)
        generator = torch.Generator().manual_seed(3)
        metrics = [recipe.train_step(engines, _batch([True, True, False, True], seed=s), s, generator)
                   for s in range(2)]
        runs.append((metrics, parameters(nets)))
    metrics, after = runs[0]
    expected = {"d_image", "d_rotation", "d_report", "d_joint", "g_image", "g_rotation", "g_report", "g_joint",
                "f_word_nll", "f_stop_nll", "f_label_bce"}
    assert set(metrics[0]) == expected
    assert all(np.isfinite(v) for m in metrics for v in m.values())
    for name in nets:
        changed = [k for k in before[name] if not torch.equal(before[name][k], after[name][k])]
        assert changed, f"{name} did not change"
    # Same seeds, same everything: every random choice flows from the generator and the init seed.
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(after[n][k], runs[1][1][n][k]) for n in after for k in after[n])


def test_unlabelled_batch_leaves_the_class_terms_alone():
    projection = "projection.parametrizations.weight.original"
    class_embed = "class_embed.parametrizations.weight.original"
    for labelled, moves in (([False] * B, False), ([True] * B, True)):
        recipe, nets, engines = _setup()
        before = parameters(nets)
        recipe.train_step(engines, _batch(labelled), 0, torch.Generator().manual_seed(0))
        after = parameters(nets)
        assert (not torch.equal(before["D_image"][projection], after["D_image"][projection])) is moves
        assert (not torch.equal(before["G"][class_embed], after["G"][class_embed])) is moves
        assert (not torch.equal(before["F"]["label_head.weight"], after["F"]["label_head.weight"])) is moves
        # The unconditional head and the rotation head learn either way.
        for key in ("real_fake.parametrizations.weight.original", "rotation.parametrizations.weight.original"):
            assert not torch.equal(before["D_image"][key], after["D_image"][key])


def test_label_consistency_term_is_off_by_default_and_moves_the_generator_when_on():
    class_embed = "class_embed.parametrizations.weight.original"
    ends = {}
    for weight in (0.0, 5.0):
        recipe, nets, engines = _setup(label_consistency_weight=weight)
        metrics = recipe.train_step(engines, _batch([True] * B), 0, torch.Generator().manual_seed(0))
        assert ("g_label_consistency" in metrics) is bool(weight)
        ends[weight] = nets["G"].state_dict()[class_embed].clone()
    assert np.isfinite(metrics["g_label_consistency"])
    assert not torch.equal(ends[0.0], ends[5.0])  # same seeds: only the extra term differs


def test_extra_teacher_forced_updates_move_f_alone():
    """mle_steps = 3 adds two likelihood-only F updates after the G step: the other networks end as with 1."""
    ends = {}
    for steps in (1, 3):
        recipe, nets, engines = _setup(mle_steps=steps)
        metrics = recipe.train_step(engines, _batch([True] * B), 0, torch.Generator().manual_seed(0))
        assert ("f_word_nll_last" in metrics) is (steps > 1)
        ends[steps] = (metrics, parameters(nets))
    (first, one), (more, three) = ends[1], ends[3]
    assert more["f_word_nll"] == first["f_word_nll"] and more["f_word_nll_last"] < more["f_word_nll"]
    for name in ("G", "D_image", "D_report", "D_joint"):
        assert all(torch.equal(one[name][k], three[name][k]) for k in one[name])
    assert not torch.equal(one["F"]["word_out.weight"], three["F"]["word_out.weight"])
    with pytest.raises(ValueError, match="mle_steps"):
        _setup(mle_steps=0)


def test_unknown_labels_may_be_nan_when_unlabelled():
    recipe, _, engines = _setup()
    batch = _batch([True, False, True, False])
    batch["labels"][1] = float("nan")
    metrics = recipe.train_step(engines, batch, 0, torch.Generator().manual_seed(0))
    assert all(np.isfinite(v) for v in metrics.values())


def test_report_adversarial_gradient_reaches_the_generator():
    """Straight-through Gumbel-softmax words carry D_report's gradient through F into G."""
    recipe, nets, engines = _setup()
    z = torch.randn(B, 80, generator=torch.Generator().manual_seed(0))
    images = nets["G"](z, torch.ones(B, 9))
    words = nets["F"](images, mode="gumbel", generator=torch.Generator().manual_seed(1))
    with frozen(engines["F"], engines["D_report"]):
        (-nets["D_report"](words).mean()).backward()
    grads = [p.grad for p in nets["G"].parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in nets["F"].parameters())


def test_frozen_restores_requires_grad():
    a = TorchEngine(torch.nn.Linear(2, 2), None)
    b = TorchEngine(torch.nn.Linear(2, 2), None)
    a.module.bias.requires_grad_(False)
    with frozen(a, b):
        assert not any(p.requires_grad for e in (a, b) for p in e.parameters())
    assert a.module.weight.requires_grad and not a.module.bias.requires_grad
    assert all(p.requires_grad for p in b.parameters())
    with pytest.raises(RuntimeError), frozen(b):
        raise RuntimeError("boom")
    assert all(p.requires_grad for p in b.parameters())


def test_engine_step_clips_and_zeroes_gradients():
    module = torch.nn.Linear(3, 1, bias=False)
    engine = TorchEngine(module, torch.optim.SGD(module.parameters(), lr=1.0), clip=0.5)
    before = module.weight.detach().clone()
    engine.backward((engine(torch.full((1, 3), 100.0))).sum())
    engine.step()
    assert module.weight.grad is None
    assert torch.linalg.norm(module.weight.detach() - before) == pytest.approx(0.5, rel=1e-4)


def test_labelled_mask_is_deterministic_per_sample():
    indices = np.arange(4000)
    mask = labelled_mask(indices, 0.3, seed=1)
    assert abs(mask.mean() - 0.3) < 0.03
    assert (labelled_mask(indices[::-1], 0.3, seed=1) == mask[::-1]).all()
    assert (labelled_mask(indices, 0.3, seed=2) != mask).any()
    assert labelled_mask(indices, 1.0, seed=1).all() and not labelled_mask(indices, 0.0, seed=1).any()


def test_make_batch_encodes_reports_and_labelled_mask():
    vocab = Vocabulary(["heart", "is", "normal", "."])
    config = {"max_sentences": 3, "max_words": 5, "label_fraction": 0.5, "label_seed": 0}
    batch = make_batch(torch.zeros(2, 1, 32, 32), torch.ones(2, 9), ["Heart is normal.", "Normal."], [10, 11],
                       vocab, config)
    assert batch["report"].shape == (2, 3, 5) and batch["report"].dtype == torch.long
    assert vocab.decode_sentences(batch["report"][0].numpy()) == "heart is normal."
    assert batch["labelled"].tolist() == labelled_mask([10, 11], 0.5, 0).tolist()


def test_f_encoder_starts_from_a_classifier_bundle_and_stays_frozen(tmp_path):
    from types import SimpleNamespace

    from factory.data.labels import CXR_LABELS
    from factory.models.bundle import load_bundle, write_bundle
    from factory.models.registry import build_networks, make_config

    judge_config = make_config("judge", {"arch": "resnet10", "image_size": 32})
    classifier = build_networks("judge", judge_config, seed=5)["judge"]
    write_bundle(str(tmp_path / "encoder"), "judge", {"judge": classifier}, judge_config, list(CXR_LABELS), None,
                 training_data={"fingerprint": "x", "description": "other patients"}, metrics={"macro_auc": 0.9},
                 trained=True)
    bundle = load_bundle(str(tmp_path / "encoder"))
    data = SimpleNamespace(parts={"studies": SimpleNamespace(label_names=tuple(CXR_LABELS))})
    recipe, nets, engines = _setup(f_encoder="resnet10", f_encoder_frozen=True, f_input_std=0.25)
    record = recipe.start_from(nets, bundle, data)
    assert record["bundle_id"] == bundle.bundle_id and record["frozen"] is True
    F_ = nets["F"]
    assert torch.equal(F_.encoder.net.layer1[0].conv1.weight, classifier.trunk.layer1[0].conv1.weight)
    assert torch.equal(F_.label_head.weight, classifier.head[-1].weight)
    # F reads a [-1, 1] image as the classifier reads the same [0, 1] film
    image = torch.rand(2, 1, 32, 32)
    F_.eval()
    assert torch.allclose(F_(image * 2 - 1, mode="labels"), classifier.eval()(image), atol=1e-5)

    before = parameters(nets)
    F_.train()
    recipe.train_step(engines, _batch([True] * B), 0, torch.Generator().manual_seed(0))
    after = parameters(nets)
    assert not F_.encoder.training  # batch norm keeps the classifier's statistics
    assert all(torch.equal(before["F"][k], after["F"][k]) for k in before["F"] if k.startswith(("encoder.", "label_head.")))
    assert not torch.equal(before["F"]["word_out.weight"], after["F"]["word_out.weight"])

    with pytest.raises(ValueError, match="F's encoder needs"):
        _setup(f_encoder="resnet18")[0].start_from(_setup(f_encoder="resnet18")[1], bundle, data)
