"""Production of labelled images without reports (the "images" product, sample kind "image") from
two test-only models registered through the generator seam (tests/toy_image_generator.py): a
label-conditioned one under the run's label policy, and an unconditional one whose classifier's
pseudo-labels below the confidence threshold are dropped and counted."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from factory import storage
from factory.cli import main
from factory.data.labels import CXR_LABELS
from factory.config import ProduceConfig
from factory.errors import BadInputError, IntegrityError
from factory.models import registry
from factory.models.bundle import load_bundle
from factory.models.cli import init_bundle
from factory.produce import pool
from factory.produce.inspect import summary
from factory.produce.pool import produce
from factory.produce.producer_specs import BundleImages, parse_producer
from factory.produce.producers import BundleImageProducer
from factory.produce.runs import production_spec
from factory.produce.shards import read_tar_members, shard_name, verify_shard
from factory.produce.verify import verify_run
from factory.produce.writer import write_run
from factory.run_manifest import read_manifest
from factory.stream import open_run

MODELS = {"toy-image": "toy_image_generator", "toy-pseudo": "toy_pseudo_generator"}
TESTS = str(Path(__file__).parent)


@pytest.fixture
def image_models(monkeypatch):
    """The two toy models' registry lines, here and in every production actor this test starts (an
    actor is another process: its ShardWorker registers them before building the producer)."""
    for name, module in MODELS.items():
        monkeypatch.setitem(registry.GENERATORS, name, module)
    base = pool.ShardWorker

    class RegisteringWorker(base):  # defined here, so Ray ships it by value
        def __init__(self, *args, **kwargs):
            from factory.models import registry as actor_registry

            sys.path.insert(0, TESTS)
            actor_registry.GENERATORS.update(MODELS)
            base.__init__(self, *args, **kwargs)

    monkeypatch.setattr(pool, "ShardWorker", RegisteringWorker)


@pytest.fixture
def bundles(image_models, tmp_path):
    for name in MODELS:
        init_bundle(str(tmp_path / name), name, size=16, seed=1)
    return {name: str(tmp_path / name) for name in MODELS}


def keys(out, manifest):
    found = []
    for record in manifest["shards"]:
        url = storage.join(out, record["name"])
        found += sorted({name.split(".", 1)[0] for name, _ in read_tar_members(storage.read_bytes(url), url)})
    return found


def test_conditional_images_are_identical_with_one_or_two_actors(ray_local, bundles, tmp_path):
    counts = tmp_path / "counts.yaml"
    counts.write_text("Cardiomegaly: 10\nEdema+Pneumothorax: 12\nNo Finding: 8\n")
    config = ProduceConfig(bundle=bundles["toy-image"], count=30, shard_size=8, batch_size=3, seed=4,
                           labels=str(counts), out=str(tmp_path / "x"))
    producer, spec = production_spec(config)
    assert isinstance(producer, BundleImages) and spec.sample_kind == "image" and producer.threshold is None
    assert parse_producer(producer.echo()) == producer
    one = produce(producer, str(tmp_path / "one"), spec, actors=1, batch_size=3, progress=False)
    two = produce(producer, str(tmp_path / "two"), spec, actors=2, batch_size=3, progress=False)
    for i in range(spec.num_shards):
        assert (tmp_path / "one" / shard_name(i)).read_bytes() == (tmp_path / "two" / shard_name(i)).read_bytes()
    assert keys(str(tmp_path / "two"), two) == [f"{spec.run_id}-{i:010d}" for i in range(30)]
    assert two["label_histogram"] == {"Cardiomegaly": 10, "Edema": 12, "Pneumothorax": 12, "No Finding": 8}
    assert two["dropped"] == {}
    verify_run(str(tmp_path / "two"), two)

    # image samples: png, cls, json; the json holds the conditioning labels, cls the primary one
    members = dict(read_tar_members((tmp_path / "two" / shard_name(0)).read_bytes(), "shard 0"))
    assert {name.split(".", 1)[1] for name in members} == {"png", "cls", "json"}
    meta = json.loads(members[f"{spec.run_id}-0000000000.json"])
    positives = [name for name in CXR_LABELS if meta["labels"][name] == 1]  # in label order
    assert meta["kind"] == "image" and "pseudo_label" not in meta and positives in (
        ["Cardiomegaly"], ["Pneumothorax", "Edema"], ["No Finding"])
    assert CXR_LABELS[int(members[f"{spec.run_id}-0000000000.cls"])] == meta["primary_label"] == positives[0]
    sample = next(iter(open_run(str(tmp_path / "two"))))
    assert sample["report"] is None and sample["image"].shape == (1, 16, 16) and sample["label"] >= 0


def test_pseudo_labelled_run_drops_and_counts_samples_below_the_threshold(ray_local, bundles, tmp_path, capsys):
    out = tmp_path / "run"
    count, seed = 40, 2
    assert main(["produce", "--bundle", bundles["toy-pseudo"], "--count", str(count), "--shard-size", "12",
                 "--batch-size", "5", "--seed", str(seed), "--actors", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = read_manifest(str(out))
    threshold = manifest["config"]["producer"]["threshold"]
    assert threshold == 0.6 and "threshold 0.6 (the bundle's)" in printed  # the bundle's value, echoed

    # the same images and confidences, computed directly from the bundle for (seed, n)
    bundle = load_bundle(bundles["toy-pseudo"])
    product = registry.spec("toy-pseudo").products[0]
    z = np.stack([np.random.default_rng([seed, n]).standard_normal(4, dtype=np.float32) for n in range(count)])
    labels, confidence = product.pseudo_label(bundle.nets, product.generate(bundle.nets, None, torch.from_numpy(z)))
    kept = [n for n in range(count) if confidence[n] >= threshold]
    assert 0 < len(kept) < count  # the toy's confidences straddle its threshold
    assert manifest["dropped"] == {BundleImageProducer.PSEUDO_LABEL_DROP: count - len(kept)}
    assert sum(sum(r["dropped"].values()) for r in manifest["shards"]) == count - len(kept)
    assert manifest["count"] == len(kept)
    assert keys(str(out), manifest) == [f"{manifest['run_id']}-{n:010d}" for n in kept]  # each kept index once

    first = kept[0]
    members = dict(read_tar_members((out / shard_name(first // 12)).read_bytes(), "shard"))
    meta = json.loads(members[f"{manifest['run_id']}-{first:010d}.json"])
    assert meta["labels"] == {name: float(v) for name, v in zip(bundle.label_names, labels[first])}
    assert meta["pseudo_label"] == {"confidence": pytest.approx(float(confidence[first])), "threshold": threshold}
    assert "pseudo-label-confidence: " in summary(str(out), manifest, "ok")
    assert main(["inspect", str(out)]) == 0  # the dataset card beside the manifest is no problem
    card = (out / "dataset_card.md").read_text()
    assert f"- {len(kept)} samples of {count} requested" in card and "model `toy-pseudo`" in card
    assert "pseudo-labels, kept where its confidence is at least 0.6" in card
    assert f"- generator bundle: `{bundles['toy-pseudo']}`" in card and "trained: no (random weights)" in card


def test_the_threshold_can_be_given_and_labels_cannot_be_for_an_unconditional_bundle(bundles, tmp_path):
    out = str(tmp_path / "x")
    producer, spec = production_spec(ProduceConfig(bundle=bundles["toy-pseudo"], count=20, threshold=0.55, out=out))
    assert producer.threshold == 0.55 and producer.labels is None and spec.sample_kind == "image"
    assert production_spec(ProduceConfig(bundle=bundles["toy-pseudo"], count=20, out=out))[1].run_id != spec.run_id
    with pytest.raises(BadInputError, match=r"^--labels: a toy-pseudo bundle is unconditional: its classifier "
                                            r"labels the images it makes, so labels are not chosen$"):
        production_spec(ProduceConfig(bundle=bundles["toy-pseudo"], count=20, labels="balanced", out=out))
    assert main(["produce", "--bundle", bundles["toy-pseudo"], "--count", "20", "--labels", "prior",
                 "--out", out]) == 2
    with pytest.raises(BadInputError, match=r"^--threshold: a toy-image bundle is conditioned on the labels chosen"):
        production_spec(ProduceConfig(bundle=bundles["toy-image"], count=20, threshold=0.5, out=out))


def test_verify_refuses_a_member_image_samples_do_not_hold(bundles, tmp_path):
    """A txt (a report) in an image shard is refused like any other stray member, even when the
    shard's record matches its bytes."""
    out = str(tmp_path / "run")
    producer, spec = production_spec(ProduceConfig(bundle=bundles["toy-image"], count=6, shard_size=6, out=out))
    manifest = write_run(producer.build(spec.seed).make_batch(range(6)), out, spec, progress=False)
    verify_run(out, manifest)
    members = read_tar_members((tmp_path / "run" / shard_name(0)).read_bytes(), "shard")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [*members[:3], (f"{spec.run_id}-0000000000.txt", b"a report"), *members[3:]]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    (tmp_path / "run" / shard_name(0)).write_bytes(data)
    record = {**manifest["shards"][0], "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with pytest.raises(IntegrityError, match=f"member {spec.run_id}-0000000000.txt is not one the format "
                                             "defines for image samples"):
        verify_shard(out, record, sample_kind="image")
