"""Bundles: bit-exact round trip on local disk and S3, integrity refusals, `medsynth bundle init`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from factory import storage
from factory.data.labels import CXR_LABELS
from factory.data.text.vocab import Vocabulary
from factory.errors import BadInputError, IntegrityError
from factory.models import cli
from factory.models.bundle import load_bundle, read_metadata, write_bundle
from factory.models.emixer import generate, make_config, z_dim
from factory.models.registry import build_networks
from factory.validation import SchemaError

TINY = dict(image_size=32, g_width=4, d_width=4, f_width=4, class_embedding=8, vocab_size=9, max_sentences=2,
            max_words=4, image_feature=8, word_embedding=8, hidden=8, word_layers=1, d_text_hidden=8)
VOCAB = Vocabulary(["heart", "normal", "."])


def _write(url: str, seed: int = 0) -> tuple[dict, dict]:
    torch.set_num_threads(1)
    config = make_config(TINY)
    nets = build_networks("emixer", config, seed=seed)
    metadata = write_bundle(url, "emixer", nets, config, list(CXR_LABELS), VOCAB.to_json(),
                            training_data={"fingerprint": "abc123", "description": "unit test", "count": 5},
                            metrics={"fid": 12.5, "note": "tiny"}, trained=True)
    return nets, metadata


def test_round_trip_is_bit_exact(storage_root):
    url = storage.join(storage_root, "bundle")
    nets, metadata = _write(url)
    assert storage.list_names(url) == ["bundle.json", "weights.safetensors"]
    bundle = load_bundle(url)
    assert bundle.bundle_id == metadata["bundle_id"] and bundle.bundle_id.startswith("emixer-")
    assert bundle.sha256 == metadata["sha256"] and bundle.metadata["trained"] is True
    assert bundle.model_config == make_config(TINY)
    assert bundle.label_names == list(CXR_LABELS) and bundle.vocabulary == VOCAB
    assert bundle.metadata["training_data"]["fingerprint"] == "abc123"
    for name, net in nets.items():
        saved, loaded = net.state_dict(), bundle.nets[name].state_dict()
        assert saved.keys() == loaded.keys()
        assert all(torch.equal(saved[k], loaded[k]) for k in saved), name
    z = torch.randn(2, z_dim(bundle.model_config), generator=torch.Generator().manual_seed(0))
    labels = torch.eye(9)[:2]
    expected, loaded_out = generate(nets, labels, z), generate(bundle.nets, labels, z)
    assert (expected[0] == loaded_out[0]).all() and (expected[1] == loaded_out[1]).all()


def test_tampered_weights_are_refused(storage_root):
    url = storage.join(storage_root, "bundle")
    _write(url)
    weights_url = storage.join(url, "weights.safetensors")
    data = bytearray(storage.read_bytes(weights_url))
    data[-1] ^= 0x01
    storage.atomic_put(weights_url, bytes(data))
    with pytest.raises(IntegrityError, match="weights.safetensors"):
        load_bundle(url)


def test_tampered_metadata_is_refused(tmp_path):
    url = str(tmp_path / "bundle")
    _write(url)
    path = tmp_path / "bundle" / "bundle.json"
    document = json.loads(path.read_text())
    document["metrics"]["fid"] = 1.0  # still schema-valid: only the hash can tell
    path.write_text(json.dumps(document))
    with pytest.raises(IntegrityError, match="bundle.json"):
        load_bundle(url)


def test_weights_swapped_with_matching_file_hash_are_refused(tmp_path):
    """Re-hashing a swapped weights file in `files` is not enough: the top-level sha256 covers it."""
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    _write(first, seed=0)
    _write(second, seed=1)
    (tmp_path / "a" / "weights.safetensors").write_bytes((tmp_path / "b" / "weights.safetensors").read_bytes())
    path = tmp_path / "a" / "bundle.json"
    document = json.loads(path.read_text())
    document["files"] = json.loads((tmp_path / "b" / "bundle.json").read_text())["files"]
    path.write_text(json.dumps(document))
    with pytest.raises(IntegrityError, match="bundle.json"):
        load_bundle(first)


def test_weights_of_an_older_network_are_refused_with_what_differs_and_when_they_were_written(tmp_path):
    # F as an earlier version built it: no sentence feedback, no layer norm after the image feature
    old = build_networks("emixer", make_config(TINY, sentence_feedback=False), seed=0)
    old["F"].feature = old["F"].feature[0]
    url = str(tmp_path / "old")
    write_bundle(url, "emixer", old, make_config(TINY), list(CXR_LABELS), VOCAB.to_json(),
                 training_data={"fingerprint": "old"}, metrics={}, trained=True,
                 created_at="2026-11-30T10:00:00+00:00")
    with pytest.raises(BadInputError) as refused:
        load_bundle(url)
    message = str(refused.value)
    assert "weights do not fit network F as this version of the factory builds it" in message
    assert "missing: feature.0.bias, feature.0.weight, feature.1.bias, +1 more" in message
    assert "unexpected: feature.bias, feature.weight" in message
    assert "of another shape: sentence_lstm.weight_ih (32, 8) where the network has (32, 16)" in message
    assert "written 2026-11-30T10:00:00+00:00" in message and "Error(s)" not in message


def test_schema_violations_and_missing_bundles_name_the_file(tmp_path):
    url = str(tmp_path / "bundle")
    with pytest.raises(BadInputError, match="bundle.json: not found"):
        load_bundle(url)
    _write(url)
    path = tmp_path / "bundle" / "bundle.json"
    document = json.loads(path.read_text())
    del document["label_names"]
    path.write_text(json.dumps(document))
    with pytest.raises(SchemaError, match="bundle.json"):
        read_metadata(url)


def test_bundle_init_writes_a_deterministic_untrained_bundle(tmp_path):
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    shas = []
    for name in ("one", "two"):
        args = parser.parse_args(["init", "emixer", "--out", str(tmp_path / name), "--size", "32", "--width", "2",
                                  "--seed", "5"])
        assert cli.run(args) == 0
        shas.append(read_metadata(str(tmp_path / name))["files"][0]["sha256"])
    assert shas[0] == shas[1]
    bundle = load_bundle(str(tmp_path / "one"))
    assert bundle.metadata["trained"] is False and bundle.model_config["image_size"] == 32
    assert bundle.model_config["vocab_size"] == len(bundle.vocabulary) > 100  # phantom report words
    assert "cardiomegaly" in bundle.vocabulary
    assert bundle.nets["G"](torch.zeros(1, 80), torch.zeros(1, 9)).shape == (1, 1, 32, 32)


def test_bundle_init_judge_loads_as_a_judge(tmp_path):
    from factory.evaluate.judge import Judge

    parser = argparse.ArgumentParser()
    cli.configure(parser)
    assert cli.run(parser.parse_args(["init", "judge", "--out", str(tmp_path / "judge"), "--size", "32"])) == 0
    judge = Judge.load(str(tmp_path / "judge"), device="cpu")
    assert read_metadata(str(tmp_path / "judge"))["trained"] is False
    features, probabilities = judge.evaluate(np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32))
    assert features.shape == (3, judge.num_features) and probabilities.shape == (3, len(judge.label_names))
    assert np.isfinite(probabilities).all()
    with pytest.raises(BadInputError, match="--width"):
        cli.run(parser.parse_args(["init", "judge", "--out", str(tmp_path / "wide"), "--width", "8"]))
