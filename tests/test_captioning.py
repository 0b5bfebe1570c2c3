"""Reports for images from a captioning bundle (the "captions" product, MedRAT): image/report pairs from
an image-only bundle (`produce --bundle IMAGES --reports CAPTIONS`) and a dataset's real images captioned
into shards (`medsynth caption`), with the pool's guarantees."""

from __future__ import annotations

import json

import numpy as np
import pytest

from factory import storage
from factory.cli import main
from factory.config import CaptionConfig, ProduceConfig
from factory.data.adapters import open_dataset
from factory.errors import BadInputError
from factory.models import medrat
from factory.models.bundle import load_bundle
from factory.models.cli import init_bundle
from factory.produce.producer_specs import CaptionedImages, DatasetCaptions, parse_producer
from factory.produce.runs import caption_spec, production_spec
from factory.produce.shards import read_tar_members, shard_name
from shard_helpers import one_and_two_actors


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Untrained bundles (a captioner, an image-only generator, a pair generator) and a CheXpert-layout
    dataset of phantoms: what the rows below read, never write."""
    root = tmp_path_factory.mktemp("captioning")
    init_bundle(str(root / "medrat"), "medrat", size=32, seed=1)
    init_bundle(str(root / "cgan"), "xraygan-cgan", size=32, seed=2)
    init_bundle(str(root / "emixer"), "emixer", size=32, width=4, seed=3)
    assert main(["data", "cxr", "--out", str(root / "cxr"), "--count", "5", "--size", "40", "--layout", "chexpert"]) == 0
    return root


def members_of(folder, index):
    return dict(read_tar_members((folder / shard_name(index)).read_bytes(), "shard"))


def test_pairs_from_an_image_bundle_are_its_images_with_the_captioners_reports(made, tmp_path):
    images_only = ProduceConfig(bundle=str(made / "cgan"), count=6, seed=3, out=str(tmp_path / "i"))
    captioned = images_only.model_copy(update={"reports": str(made / "medrat")})
    image_producer, image_spec = production_spec(images_only)
    producer, spec = production_spec(captioned)
    assert isinstance(producer, CaptionedImages) and spec.sample_kind == "pair"
    assert parse_producer(producer.echo()) == producer and spec.run_id != image_spec.run_id
    plain = image_producer.build(3).make_batch(range(6))
    pairs = producer.build(3).make_batch(range(6))
    captioner = load_bundle(str(made / "medrat"))
    expected = medrat.decode_reports(medrat.caption(captioner.nets, np.stack([s.images["png"] for s in plain])),
                                     captioner.vocabulary)
    for image, pair, report in zip(plain, pairs, expected):
        assert np.array_equal(image.images["png"], pair.images["png"]) and image.label == pair.label
        assert pair.report == report and pair.metadata["kind"] == "pair"
        assert pair.metadata["report_source"]["bundle_sha256"] == captioner.sha256
        assert pair.metadata["source"] == image.metadata["source"]  # the image's maker stays the source


@pytest.mark.parametrize("argv, expected", [
    (["--bundle", "emixer", "--reports", "medrat"], "--reports: a emixer bundle writes its own reports"),
    (["--bundle", "cgan", "--reports", "cgan"], "a xraygan-cgan bundle makes images, not reports for images"),
    (["--source", "phantom-cxr", "--reports", "medrat"], "the phantom source writes its own reports"),
])
def test_reports_from_a_bundle_that_cannot_caption_are_refused(made, tmp_path, capsys, argv, expected):
    argv = [arg if arg.startswith("--") or arg == "phantom-cxr" else str(made / arg) for arg in argv]
    assert main(["produce", *argv, "--count", "4", "--out", str(tmp_path / "run")]) == 2
    assert expected in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_caption_a_dataset_with_one_or_two_actors_byte_identical_and_exactly_once(ray_local, made, tmp_path):
    config = CaptionConfig(bundle=str(made / "medrat"), source=str(made / "cxr"), layout="chexpert",
                           shard_size=2, batch_size=2, out=str(tmp_path / "x"))
    producer, spec = caption_spec(config)
    assert isinstance(producer, DatasetCaptions) and spec.requested == 5 and producer.size == 32
    one_and_two_actors(producer, spec, tmp_path)
    card = (tmp_path / "two" / "dataset_card.md").read_text()
    front = card.split("\n---\n", 1)[0]  # the images are the dataset's: only the reports are generated
    assert "\nsynthetic: false\n" in front and '\ngenerated: ["txt"]\n' in front
    assert "only the report (`txt`) of each sample is generated" in card and "Synthetic data" not in card

    dataset = open_dataset(str(made / "cxr"), "chexpert", size=32)
    found = {}
    for i in range(spec.num_shards):
        for name, data in members_of(tmp_path / "two", i).items():
            found.setdefault(name.split(".", 1)[0], {})[name.split(".", 1)[1]] = data
    assert len(found) == 5 and all(set(m) == {"png", "txt", "cls", "json"} for m in found.values())
    for index, key in enumerate(sorted(found)):
        meta = json.loads(found[key]["json"])
        study = dataset[index]
        assert meta["kind"] == "caption" and meta["source_study_id"] == study.study_id
        assert meta["real_image"]["layout"] == "chexpert" and meta["source"]["recipe"] == "medrat"
        assert meta["labels"] == {n: float(v) for n, v in zip(dataset.label_names, study.labels.tolist())}


def test_caption_refuses_a_dataset_changed_since_the_run_was_planned(made, tmp_path):
    storage_copy = tmp_path / "cxr"
    import shutil

    shutil.copytree(made / "cxr", storage_copy)
    producer, _ = caption_spec(CaptionConfig(bundle=str(made / "medrat"), source=str(storage_copy),
                                             layout="chexpert", out=str(tmp_path / "x")))
    table = storage_copy / "train.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:-1]) + "\n")  # one study fewer
    with pytest.raises(BadInputError, match="changed since this run was planned"):
        producer.build(0)


def test_caption_cli_refuses_a_bundle_that_does_not_caption(made, tmp_path, capsys):
    assert main(["caption", "--bundle", str(made / "cgan"), "--source", str(made / "cxr"), "--layout", "chexpert",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--bundle" in capsys.readouterr().err and not storage.exists(str(tmp_path / "run"))
