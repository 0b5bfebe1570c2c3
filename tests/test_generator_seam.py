"""The generator seam: models moved onto it produce what they produced before it (the same bundles
and, for fixed seeds, byte-identical shards and volumes; digests recorded before the move, see
tests/seam_reference.py), a new model needs only its own file and one registry line, and producers
are typed specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from seam_reference import reference_digests

from factory.cli import main
from factory.config import ProduceConfig
from factory.errors import BadInputError
from factory.models import registry
from factory.models.bundle import load_bundle
from factory.models.cli import init_bundle
from factory.produce.producer_specs import BundlePairs, BundleTranslation, PhantomPairs, parse_producer
from factory.produce.runs import production_spec
from factory.produce.writer import write_run
from factory.train.engines import torch_engines
from factory.train.recipes import get_recipe

RECORDED = json.loads((Path(__file__).parent / "seam_reference.json").read_text())["by_cpu_capability"]


def test_bundles_and_runs_are_byte_identical_to_before_the_seam(ray_local, tmp_path):
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in RECORDED:  # the bytes depend on the CPU's float kernels (tests/seam_reference.py)
        pytest.skip(f"no digests recorded on a {capability} CPU (recorded: {sorted(RECORDED)}); "
                    "record them with: python tests/seam_reference.py tests/seam_reference.json")
    assert reference_digests(tmp_path) == RECORDED[capability]


@pytest.fixture
def toy_registered(monkeypatch):
    """The toy model's one registry line (tests/toy_generator.py is its own file)."""
    monkeypatch.setitem(registry.GENERATORS, "toy", "toy_generator")


def test_every_registered_model_declares_its_spec_under_its_name():
    for name in registry.names():
        spec = registry.spec(name)
        assert spec.name == name and spec.summary
        assert set(spec.untrained_options) <= {"width", "sources"}  # what `bundle init` can pass
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        registry.spec("nope")
    with pytest.raises(BadInputError, match="--sources: emixer bundles take only --width besides --size and --seed"):
        init_bundle("unused", "emixer", sources=["mri"])
    with pytest.raises(KeyError, match="no training recipe for 'judge'"):
        get_recipe("judge")


def test_a_new_model_is_its_own_file_plus_one_registry_line(toy_registered, tmp_path):
    """bundle init, the training recipe and bundle production work for the toy with no other change."""
    assert main(["bundle", "init", "toy", "--out", str(tmp_path / "toy"), "--size", "8", "--seed", "2"]) == 0
    assert load_bundle(str(tmp_path / "toy")).recipe == "toy"
    with pytest.raises(BadInputError, match="--width: toy bundles take only --size and --seed"):
        init_bundle(str(tmp_path / "wide"), "toy", size=8, width=4)

    recipe = get_recipe("toy")
    nets = recipe.build({"image_size": 8}, seed=0)
    engines = torch_engines(nets, recipe.optimizer_config)
    batch = {"image": torch.zeros(3, 1, 8, 8), "labels": torch.eye(9)[:3]}
    first = recipe.train_step(engines, batch, 0, torch.Generator().manual_seed(0))["mse"]
    for step in range(1, 20):
        last = recipe.train_step(engines, batch, step, torch.Generator().manual_seed(0))["mse"]
    assert last < first

    config = ProduceConfig(bundle=str(tmp_path / "toy"), count=4, shard_size=4, seed=1, out=str(tmp_path / "run"),
                           labels=str(_counts(tmp_path, {"Cardiomegaly": 2, "Edema+Pneumothorax": 2})))
    producer, spec = production_spec(config)
    assert isinstance(producer, BundlePairs) and spec.sample_kind == "pair" and spec.run_id.startswith("toy-s1-")
    samples = producer.build(spec.seed).make_batch(range(4))
    assert sorted(s.report for s in samples) == ["cardiomegaly", "cardiomegaly", "pneumothorax edema",
                                                 "pneumothorax edema"]  # in label order
    manifest = write_run(samples, config.out, spec, progress=False)
    assert manifest["count"] == 4 and parse_producer(manifest["config"]["producer"]) == producer


def test_products_decide_which_command_takes_a_bundle(tmp_path):
    """A bundle goes to the command that makes what its model makes, with one line naming the file."""
    duiit = str(tmp_path / "duiit")
    init_bundle(duiit, "duiit", size=32, width=2)
    with pytest.raises(BadInputError, match=r"bundle.json: a duiit bundle makes translations, not image/report pairs or "
                                            r"labelled images \(use medsynth translate\)"):
        production_spec(ProduceConfig(bundle=duiit, count=4, out=str(tmp_path / "x")))
    judge = str(tmp_path / "judge")
    init_bundle(judge, "judge", size=32)
    with pytest.raises(BadInputError, match="a judge bundle makes nothing to produce"):
        production_spec(ProduceConfig(bundle=judge, count=4, out=str(tmp_path / "x")))


def test_producer_specs_are_validated_and_round_trip_through_their_json():
    spec = BundleTranslation(bundle="b", bundle_sha256="0" * 64, source="s", image_size=32, plan_sha256="1" * 64,
                             studies=2, volumes=1, plan={"root": "s"})
    assert "plan" not in spec.echo() and parse_producer(spec.echo()) == spec.model_copy(update={"plan": None})
    assert parse_producer({"type": "phantom-cxr", "size": 32}) == PhantomPairs(size=32)
    with pytest.raises(ValidationError):
        parse_producer({"type": "bundle-pairs", "bundle": "b"})  # no count
    with pytest.raises(ValidationError):
        parse_producer({"type": "phantom-cxr", "size": 32, "extra": 1})
    with pytest.raises(ValidationError):
        parse_producer({"type": "stl-mesh"})


def _counts(tmp_path, counts) -> str:
    path = tmp_path / "counts.yaml"
    path.write_text(json.dumps(counts))
    return str(path)
