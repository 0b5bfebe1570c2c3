"""The judge: network and config, input handling, a quick training run exported as a bundle and read
back, `medsynth evaluate judge`, and the FID sanity check in its feature space (real vs a disjoint
real split is small; real vs blurred or noise images is large)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import JUDGE_COUNT, JUDGE_SIZE

from factory.data.labels import CXR_LABELS
from factory.errors import BadInputError
from factory.evaluate import cli, metrics
from factory.evaluate.judge import (Judge, dataset_data, phantom_data, split_indices, to_judge_input,
                                    train_judge)
from factory.models import registry
from factory.models.bundle import load_bundle, read_metadata
from factory.models.judge import make_config

SIZE, COUNT = JUDGE_SIZE, JUDGE_COUNT


@pytest.fixture(scope="module")
def trained(small_judge):
    """(bundle url, JudgeResult): the session's small judge (tests/conftest.py), shared with the run report."""
    return small_judge


@pytest.fixture(scope="module")
def real_images():
    """Two disjoint sets of phantoms from a seed the judge never saw, as uint8 (N, S, S)."""
    images = phantom_data(400, SIZE, seed=2).images
    uint8 = np.round(images[:, 0] * 255).astype(np.uint8)
    return uint8[:200], uint8[200:]


def test_config_and_network_shapes():
    assert "judge" in registry.names()
    config = registry.make_config("judge", {"image_size": 32})
    net = registry.build_networks("judge", config, seed=3)["judge"]
    again = registry.build_networks("judge", config, seed=3)["judge"]
    x = torch.rand(2, 1, 32, 32)
    net.eval(), again.eval()
    assert net.features(x).shape == (2, 512) and net(x).shape == (2, len(CXR_LABELS))
    assert torch.equal(net(x), again(x))  # initial weights are a function of the seed
    for bad in ({"arch": "vgg"}, {"image_size": 16}, {"num_labels": 0}, {"colour": True}, {"dropout": 1.0}):
        with pytest.raises(ValueError):
            make_config(bad)


def test_input_handling():
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(1, 64, 64)
    as_uint8 = np.round(ramp * 255).astype(np.uint8)
    a = to_judge_input(as_uint8, 32)
    b = to_judge_input(torch.from_numpy(as_uint8.astype(np.float32) / 255), 32)
    c = to_judge_input((as_uint8.astype(np.uint16) * 257)[:, None], 32)  # 16-bit PNG scale
    d = to_judge_input(np.repeat(as_uint8[:, None], 3, axis=1), 32)  # RGB grey
    assert a.shape == (1, 1, 32, 32) and a.dtype == torch.float32
    for other in (b, c, d):
        assert torch.allclose(a, other, atol=1e-6)
    assert torch.allclose(to_judge_input(np.full((2, 50, 70), 0.25, np.float32), 32), torch.tensor(0.25))
    assert to_judge_input(as_uint8[0], 64).shape == (1, 1, 64, 64)  # one (H, W) image
    for bad in (ramp * 2, ramp.astype(np.int32), np.zeros((1, 2, 8, 8), np.float32), np.zeros((1, 1, 1, 8, 8)),
                np.full((1, 8, 8), np.nan, np.float32), [[0.0]]):
        with pytest.raises(BadInputError):
            to_judge_input(bad, 32)


def test_split_is_seeded_and_disjoint():
    train, test = split_indices(100, 0.2, seed=5)
    assert len(test) == 20 and not set(train) & set(test) and len(train) + len(test) == 100
    assert np.array_equal(test, split_indices(100, 0.2, seed=5)[1])
    assert not np.array_equal(test, split_indices(100, 0.2, seed=6)[1])
    with pytest.raises(BadInputError):
        split_indices(1, 0.5, seed=0)


def test_dataset_data_resizes_studies_and_keeps_labels():
    from factory.data.phantoms.dataset import PhantomCxrDataset

    dataset = PhantomCxrDataset(6, size=48, seed=4)
    data = dataset_data(dataset, size=32, progress=False)
    assert data.images.shape == (6, 1, 32, 32) and data.images.dtype == np.float32
    assert np.array_equal(data.labels, np.stack([dataset[i].labels.numpy() for i in range(6)]))
    assert data.study_ids == [dataset[i].study_id for i in range(6)]
    assert len(data.fingerprint()) == 64


def test_trained_judge_bundle(trained):
    out, result = trained
    metadata = read_metadata(out)
    assert metadata["recipe"] == "judge" and metadata["vocabulary"] is None and metadata["trained"] is True
    assert metadata["label_names"] == list(CXR_LABELS)
    assert metadata["metrics"]["macro_auc"] == pytest.approx(result.macro_auc)
    assert {f"auc/{name}" for name in CXR_LABELS} <= set(metadata["metrics"])
    assert metadata["training_data"]["count"] == COUNT
    assert result.train_count + result.test_count == COUNT and result.test_count == COUNT // 5
    # Even this small, quick judge (24 steps at 32 px) tells findings apart better than chance (0.5);
    # the default judge reaches 0.9 and more.
    assert result.macro_auc > 0.6, result.auc
    assert result.history[-1] < result.history[0]


def test_judge_loads_from_its_bundle_and_gives_the_same_outputs(trained, real_images):
    out, result = trained
    loaded = Judge.load(out, device="cpu", batch_size=64)
    assert loaded.bundle_id == result.metadata["bundle_id"] and loaded.label_names == list(CXR_LABELS)
    assert loaded.image_size == SIZE and loaded.metrics["macro_auc"] == pytest.approx(result.macro_auc)
    images = real_images[0][:100]
    features, probabilities = loaded.evaluate(images)
    assert features.shape == (100, 512) and probabilities.shape == (100, len(CXR_LABELS))
    assert np.allclose(features, result.judge.features(images), atol=1e-5)
    assert np.allclose(probabilities, result.judge.probabilities(images), atol=1e-6)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    # Batching does not change the answer; float input in [0, 1] reads as the uint8 it came from;
    # a larger image is resized to the judge's size.
    assert np.allclose(Judge.load(out, device="cpu", batch_size=7).probabilities(images), probabilities, atol=1e-6)
    assert np.allclose(loaded.probabilities(torch.from_numpy(images / 255.0).float()), probabilities, atol=1e-6)
    assert loaded.probabilities(np.zeros((3, 2 * SIZE, 2 * SIZE), np.uint8)).shape == (3, len(CXR_LABELS))


def test_judge_refuses_a_bundle_of_another_recipe(tmp_path):
    from factory.models.bundle import write_bundle

    config = registry.make_config("emixer", dict(image_size=32, g_width=4, d_width=4, f_width=4, class_embedding=8,
                                                 vocab_size=9, max_sentences=2, max_words=4, image_feature=8,
                                                 word_embedding=8, hidden=8, word_layers=1, d_text_hidden=8))
    write_bundle(str(tmp_path), "emixer", registry.build_networks("emixer", config, seed=0), config, list(CXR_LABELS),
                 None, training_data={"fingerprint": "x"}, metrics={}, trained=False)
    with pytest.raises(BadInputError, match="not a judge"):
        Judge.load(str(tmp_path), device="cpu")


def test_fid_in_judge_features_tells_real_from_blurred_and_noise(trained, real_images):
    _, result = trained
    judge = result.judge
    real_a, real_b = real_images
    blurred = TF.gaussian_blur(torch.from_numpy(real_a)[:, None].float() / 255, kernel_size=5, sigma=1.5)
    noise = np.random.default_rng(0).integers(0, 256, size=real_a.shape, dtype=np.uint8)
    features_a = judge.features(real_a)
    same = metrics.fid(features_a, judge.features(real_b))
    blur = metrics.fid(features_a, judge.features(blurred))
    rand = metrics.fid(features_a, judge.features(noise))
    assert blur > 3 * same and rand > 10 * same, (same, blur, rand)
    kid_same, _ = metrics.kid(features_a, judge.features(real_b), subsets=20, subset_size=100)
    kid_blur, _ = metrics.kid(features_a, judge.features(blurred), subsets=20, subset_size=100)
    assert kid_blur > 5 * abs(kid_same), (kid_same, kid_blur)


def test_cli_trains_the_same_judge_as_the_library(tmp_path):
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    out = tmp_path / "cli"
    args = parser.parse_args(["judge", "--out", str(out), "--count", "80", "--size", "32", "--epochs", "1",
                              "--seed", "3", "--device", "cpu"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        assert cli.run(args) == 0
    text = printed.getvalue()
    assert "| **macro** |" in text and all(name in text for name in CXR_LABELS)
    metadata = read_metadata(str(out))
    assert metadata["bundle_id"] in text
    library = train_judge(str(tmp_path / "lib"), count=80, size=32, epochs=1, seed=3, device="cpu", progress=False)
    # Same seed, same data, same machine: bit-identical weights.
    assert metadata["files"] == library.metadata["files"]
    assert json.dumps(metadata["metrics"], sort_keys=True) == json.dumps(library.metadata["metrics"], sort_keys=True)
    bundle = load_bundle(str(out))
    assert set(bundle.nets) == {"judge"} and bundle.vocabulary is None
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        cli.run(parser.parse_args(["judge", "--count", "80"]))  # --out is required
