"""Table 4 of `medsynth bench train xraygan`: its real-only arm (C alone) is UCGAN's C at xi = 0; unlabelled
films' labels never reach C; `--thresholds none` is the real-only arm alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_xraygan_recipe import _batch, _setup

import factory.data.phantoms.cxr as cxr
from factory.bench.train_xraygan import TABLE4_OFFSET, parse_thresholds, real_only_step, table4_seed
from factory.train.engines import torch_engines


def test_real_only_arm_trains_c_as_ucgan_does_at_xi_zero():
    recipe, nets, engines = _setup("xraygan-ucgan", seed=3, xi=0.0, threshold=0.0)
    alone_recipe, alone_nets, _ = _setup("xraygan-ucgan", seed=3, xi=0.0)
    alone_engines = torch_engines({"C": alone_nets["C"]}, alone_recipe.optimizer_config)
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        batch = _batch(step)
        losses = recipe.train_step(engines, batch, step, generator)
        real_only_step(alone_recipe, alone_engines, batch["image"], batch["targets"])
    assert losses["c_kept"] == 1.0  # threshold 0: every fake reached C's loss, weighted by xi = 0
    for (name, joint), alone_p in zip(nets["C"].named_parameters(), alone_nets["C"].parameters()):
        assert torch.allclose(joint, alone_p, atol=1e-6), name
    # C's running statistics are those of the real batches alone in both: its generated batch is
    # normalised by its own statistics without moving them.
    norms = [m for m in nets["C"].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    alone_norms = [m for m in alone_nets["C"].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and len(norms) == len(alone_norms)
    for joint, alone in zip(norms, alone_norms):
        assert torch.allclose(joint.running_mean, alone.running_mean, atol=1e-6)
        assert torch.allclose(joint.running_var, alone.running_var, atol=1e-6)


def test_unlabelled_films_labels_never_reach_c(monkeypatch):
    """With `--table4-unlabelled`, the further films' labels are withheld: flipping them changes nothing."""
    settings = {"seed": 0, "size": 32, "batch": 4, "thresholds": [], "table4_real": 6, "table4_unlabelled": 6,
                "table4_steps": 3, "table4_every": 0, "table4_threads": 1}
    test = [cxr.generate_study(0, 10_000 + i, 32) for i in range(24)]
    test_images, test_labels = np.stack([s.image for s in test]), np.stack([s.labels for s in test])
    labelled_too = {**settings, "table4_real": 12, "table4_unlabelled": 0}
    plain = table4_seed(settings, test_images, test_labels, seed=1)["real only"]["curve"]
    plain_labelled = table4_seed(labelled_too, test_images, test_labels, seed=1)["real only"]["curve"]

    original = cxr.generate_study

    def flipped(seed, index, size, *args, **kwargs):
        study = original(seed, index, size, *args, **kwargs)
        if index >= TABLE4_OFFSET + settings["table4_real"]:
            study = dataclasses.replace(study, labels=1 - np.nan_to_num(study.labels))
        return study

    monkeypatch.setattr(cxr, "generate_study", flipped)
    assert table4_seed(settings, test_images, test_labels, seed=1)["real only"]["curve"] == plain
    # The flip does change C where those films are labelled.
    assert table4_seed(labelled_too, test_images, test_labels, seed=1)["real only"]["curve"] != plain_labelled


def test_thresholds_none_is_the_real_only_arm_alone_and_bad_ones_are_refused():
    assert parse_thresholds("none") == []
    assert parse_thresholds("0.6,0.8") == [0.6, 0.8]
    for bad in ("", "1.5", "0.8,-0.1"):
        with pytest.raises(SystemExit):
            parse_thresholds(bad)
