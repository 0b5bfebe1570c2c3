"""`medsynth explain`, in process, on an untrained tiny justify bundle whose counterfactual search is
cut to a few steps (what is written is checked, not how good it is; M's success on a trained model is
tests/test_justify_models.py's): files and a dataset in, JSON, PNGs and one self-contained HTML page
out; a dataset explained into shards at an S3 URL on the production pool; and the refusals."""

from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pytest
from justify_helpers import write_untrained_bundle
from PIL import Image

from factory import storage
from factory.cli import main
from factory.config import ExplainConfig
from factory.data.adapters import open_dataset
from factory.data.adapters.cxr import decode_image
from factory.data.labels import CXR_LABELS
from factory.errors import BadInputError
from factory.models.bundle import load_bundle
from factory.produce.explain import explain_images, sample_seed
from factory.produce.manifest import read_manifest
from factory.produce.pool import produce
from factory.produce.producer_specs import DatasetExplanations, parse_producer
from factory.produce.runs import explanation_spec
from factory.produce.shards import read_tar_members, shard_name
from factory.produce.verify import verify_run

M_QUICK = {"m_steps": 2, "m_max_iter": 2, "m_restarts": 0}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """An untrained justify bundle of TINY's widths at 32 px, its search a few L-BFGS steps long."""
    return write_untrained_bundle(str(tmp_path_factory.mktemp("justify") / "bundle"), **M_QUICK)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two X-rays as files: a PNG and a 48 px JPEG (resized to the bundle's 32)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(folder / "b.jpg", quality=95)
    return [str(folder / "a.png"), str(folder / "b.jpg")]


def test_explain_writes_json_pngs_and_one_self_contained_page(bundle, images, tmp_path):
    out = tmp_path / "out"
    assert main(["explain", "--bundle", bundle, *images, "--out", str(out), "--seed", "3"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0000-a.counterfactual.png", "0000-a.json", "0000-a.side-by-side.png",
                     "0001-b.counterfactual.png", "0001-b.json", "0001-b.side-by-side.png", "index.html"]
    # The same as the library function gives for the same 8-bit inputs (read as the adapters read) and seed.
    inputs = np.stack([np.rint(decode_image(open(p, "rb").read(), p, 32)[0].numpy() * 255).astype(np.uint8)
                       for p in images])
    assert np.array_equal(inputs[0], np.asarray(Image.open(images[0])))
    first = json.loads((out / "0000-a.json").read_text())
    assert first["input"] == images[0] and first["seed"] == 3 and first["bundle_id"].startswith("justify-")
    assert set(first["probabilities"]) == set(CXR_LABELS) and first["diagnosis"] in CXR_LABELS
    assert first["alternative"] != first["diagnosis"] and isinstance(first["alternative_reached"], bool)
    counterfactual = np.asarray(Image.open(out / first["counterfactual"]))
    assert counterfactual.shape == (32, 32) and counterfactual.dtype == np.uint8
    direct = explain_images(load_bundle(bundle), inputs, seed=3)
    assert np.array_equal(counterfactual, direct[0].counterfactual)
    assert {k: first[k] for k in direct[0].to_json()} == direct[0].to_json()
    side = np.asarray(Image.open(out / "0000-a.side-by-side.png"))
    assert side.shape == (256 + 16, 2 * 256 + 4)
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and not re.search(r"src=['\"](?!data:)", page)
    assert "0001-b" not in page and images[1] in page and first["caption"].split()[0] in page


def test_explain_reads_a_dataset_through_its_adapter(bundle, tmp_path):
    assert main(["data", "cxr", "--out", str(tmp_path / "d"), "--count", "3", "--size", "32",
                 "--layout", "folder"]) == 0
    out = tmp_path / "out"
    assert main(["explain", "--bundle", bundle, str(tmp_path / "d"), "--layout", "folder", "--count", "2",
                 "--out", str(out)]) == 0
    records = sorted(out.glob("*.json"))
    assert len(records) == 2 and json.loads(records[0].read_text())["input"].startswith(str(tmp_path / "d") + "#")


def _refused(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_bundle_that_does_not_explain_is_refused(capsys, images, tmp_path):
    assert main(["bundle", "init", "xraygan-cgan", "--out", str(tmp_path / "c"), "--size", "16", "--width", "2"]) == 0
    line = _refused(capsys, ["explain", "--bundle", str(tmp_path / "c"), images[0], "--out", str(tmp_path / "o")])
    assert "a xraygan-cgan bundle makes images, not explanations" in line and not (tmp_path / "o").exists()


def test_an_unreadable_image_is_refused(bundle, capsys, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    line = _refused(capsys, ["explain", "--bundle", bundle, images[0], str(bad), "--out", str(tmp_path / "o")])
    assert f"{bad}: unreadable image" in line and not (tmp_path / "o").exists()
    line = _refused(capsys, ["explain", "--bundle", bundle, str(tmp_path / "missing.png"),
                             "--out", str(tmp_path / "o")])
    assert "missing.png: cannot read the image" in line


def test_an_output_folder_with_other_content_is_refused(bundle, capsys, images, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    line = _refused(capsys, ["explain", "--bundle", bundle, images[0], "--out", str(tmp_path / "o")])
    assert "exists and is not an empty folder" in line
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["keep.txt"]
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Five phantom studies in the CheXpert layout at 40 px (read at the bundle's 32)."""
    root = tmp_path_factory.mktemp("explain-data") / "cxr"
    assert main(["data", "cxr", "--out", str(root), "--count", "5", "--size", "40", "--layout", "chexpert"]) == 0
    return str(root)


POOL_FLAGS = ["--shard-size", "2", "--batch-size", "2", "--seed", "4"]


def test_explain_a_dataset_on_the_pool_one_or_two_actors_byte_identical_and_exactly_once(
        ray_local, bundle, dataset, s3_root, tmp_path, capsys):
    config = ExplainConfig(bundle=bundle, source=dataset, layout="chexpert", shard_size=2, batch_size=2, seed=4,
                           out=s3_root)
    producer, spec = explanation_spec(config)
    assert isinstance(producer, DatasetExplanations) and parse_producer(producer.echo()) == producer
    assert spec.sample_kind == "explanation" and spec.requested == 5 and producer.size == 32
    one = produce(producer, str(tmp_path / "one"), spec, actors=1, batch_size=2, progress=False)
    # The command line with a URL --out: the same run (same settings, same run id) on two actors, on S3.
    argv = ["explain", "--bundle", bundle, dataset, "--layout", "chexpert", "--out", s3_root, "--actors", "2",
            *POOL_FLAGS]
    assert main(argv) == 0
    assert f"run {spec.run_id}: 5 explained images" in capsys.readouterr().out
    two = read_manifest(s3_root)
    assert [s["sha256"] for s in two["shards"]] == [s["sha256"] for s in one["shards"]]
    for i in range(spec.num_shards):
        assert (tmp_path / "one" / shard_name(i)).read_bytes() == storage.read_bytes(storage.join(s3_root, shard_name(i)))
    verify_run(s3_root, two)
    assert main(argv) == 0 and read_manifest(s3_root)["shards"] == two["shards"]  # finished: not written again
    assert main(["inspect", s3_root]) == 0 and "explanation" in capsys.readouterr().out
    card = storage.read_bytes(storage.join(s3_root, "dataset_card.md")).decode()
    assert 'sample_kind: "explanation"' in card and "The images are the source dataset's own" in card
    assert '\nsynthetic: false\ngenerated: ["txt", "cf.png", "json.explanation"]\n' in card
    assert "`cf.png` the counterfactual X-ray" in card and "model `justify`" in card

    found: dict[str, dict[str, bytes]] = {}
    for i in range(spec.num_shards):
        for name, data in read_tar_members((tmp_path / "one" / shard_name(i)).read_bytes(), "shard"):
            key, extension = name.split(".", 1)
            assert extension not in found.setdefault(key, {})
            found[key][extension] = data
    assert [int(key.rsplit("-", 1)[1]) for key in sorted(found)] == list(range(5))  # every index, once
    assert all(set(members) == {"png", "cf.png", "txt", "cls", "json"} for members in found.values())
    studies = open_dataset(dataset, "chexpert", size=32)
    for index, key in enumerate(sorted(found)):
        meta = json.loads(found[key]["json"])
        study = studies[index]
        assert meta["kind"] == "explanation" and meta["source_study_id"] == study.study_id and meta["seed"] == 4
        assert meta["labels"] == {n: float(v) for n, v in zip(studies.label_names, study.labels.tolist())}
        assert meta["source"]["recipe"] == "justify" and meta["real_image"]["layout"] == "chexpert"
    # Sample 3 is its image explained alone with the seed of (run seed, 3): nothing of its batch in it.
    image = np.array(Image.open(io.BytesIO(found[sorted(found)[3]]["png"])))
    alone = explain_images(load_bundle(bundle), image[None], seed=sample_seed(4, 3))[0]
    meta = json.loads(found[sorted(found)[3]]["json"])
    assert meta["explanation"] == {k: v for k, v in alone.to_json().items() if k != "caption"}
    assert found[sorted(found)[3]]["txt"].decode() == alone.caption
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(found[sorted(found)[3]]["cf.png"]))), alone.counterfactual)


@pytest.mark.parametrize("extra, expected", [
    pytest.param(["IMAGE", "--out", "s3://medsynth-test/x"],
                 "s3://medsynth-test/x: shards at a URL are made from a dataset", id="url-out-with-image-files"),
    pytest.param(["DATA", "DATA", "--layout", "chexpert", "--out", "s3://medsynth-test/x"],
                 "a production run explains one dataset; give one root", id="url-out-with-two-datasets"),
    pytest.param(["IMAGE", "--out", "LOCAL", "--actors", "2"], "--actors: sets a production pool run",
                 id="pool-setting-with-a-folder-out"),
    pytest.param(["DATA", "--layout", "chexpert", "--out", "s3://medsynth-test/x", "--shard-size", "0"],
                 "command line: shard_size: Input should be greater than 0", id="bad-pool-setting"),
])
def test_pool_runs_that_cannot_be_are_refused(bundle, dataset, images, tmp_path, capsys, extra, expected):
    names = {"IMAGE": images[0], "DATA": dataset, "LOCAL": str(tmp_path / "o")}
    line = _refused(capsys, ["explain", "--bundle", bundle, *(names.get(arg, arg) for arg in extra)])
    assert expected in line and not (tmp_path / "o").exists()


def test_an_explanation_run_stops_on_a_dataset_changed_since_it_was_planned(bundle, dataset, tmp_path):
    copy = tmp_path / "cxr"
    shutil.copytree(dataset, copy)
    producer, _ = explanation_spec(ExplainConfig(bundle=bundle, source=str(copy), layout="chexpert",
                                                 out=str(tmp_path / "x")))
    table = copy / "train.csv"
    table.write_text("\n".join(table.read_text().splitlines()[:-1]) + "\n")  # one study fewer
    with pytest.raises(BadInputError, match="changed since this run was planned"):
        producer.build(0)
