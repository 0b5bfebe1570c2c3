"""`medsynth produce --bundle JUSTIFY --captions DATA --layout L`: an X-ray per report of a report corpus
(phantom IU X-ray), labels from the report through the labeler, on an untrained tiny justify bundle:
sample n is report n, a function of (seed, n) alone; one Ray run for 1 vs 2 actors; the refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from justify_helpers import write_untrained_bundle
from shard_helpers import one_and_two_actors

from factory.cli import main
from factory.config import ProduceConfig
from factory.data.adapters import open_dataset
from factory.data.text.labeler import label_report
from factory.errors import BadInputError
from factory.produce.producer_specs import ReportImages
from factory.produce.producers import primary_label
from factory.produce.runs import production_spec
from factory.produce.shards import read_tar_members, shard_name

COUNT = 6


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    write_untrained_bundle(str(root / "justify"))
    assert main(["data", "cxr", "--out", str(root / "iu"), "--count", str(COUNT), "--size", "32",
                 "--layout", "iu-xray"]) == 0
    return root


def _config(made, tmp_path, **changes) -> ProduceConfig:
    settings = {"bundle": str(made / "justify"), "captions": str(made / "iu"), "layout": "iu-xray", "count": COUNT,
                "shard_size": 3, "batch_size": 2, "seed": 5, "out": str(tmp_path / "run")}
    return ProduceConfig(**{**settings, **changes})


def test_each_report_gets_its_image_labels_from_the_labeler_and_noise_from_seed_and_index(made, tmp_path):
    producer, spec = production_spec(_config(made, tmp_path))
    assert isinstance(producer, ReportImages) and spec.sample_kind == "pair" and spec.requested == COUNT
    corpus = open_dataset(str(made / "iu"), "iu-xray")
    assert producer.corpus_sha256 == corpus.index_sha256() and producer.corpus_sha256 in json.dumps(spec.config)
    built = producer.build(seed=5)
    samples = built.make_batch(range(0, 3))
    names = built.bundle.label_names
    for index, sample in zip(range(3), samples):
        study = corpus[index]
        assert sample.report == study.report and sample.metadata["source_study_id"] == study.study_id
        assert sample.metadata["labels"] == label_report(study.report)
        vector = np.array([sample.metadata["labels"].get(n, 0.0) for n in names])
        assert sample.label == primary_label(vector, names) and sample.metadata["primary_label"] == names[sample.label]
        assert sample.images["png"].shape == (32, 32) and sample.images["png"].dtype == np.uint8
    # Sample 2 alone, in another batch, is the same; another seed draws other noise.
    assert np.array_equal(built.make_batch(range(2, 3))[0].images["png"], samples[2].images["png"])
    assert not np.array_equal(producer.build(seed=6).make_batch(range(2, 3))[0].images["png"], samples[2].images["png"])


def test_report_images_with_one_or_two_actors_byte_identical_and_exactly_once(ray_local, made, tmp_path):
    producer, spec = production_spec(_config(made, tmp_path))
    two = one_and_two_actors(producer, spec, tmp_path)
    assert two["count"] == COUNT
    members = dict(read_tar_members((tmp_path / "two" / shard_name(0)).read_bytes(), "shard"))
    key = sorted(members)[0].split(".", 1)[0]
    assert sorted(n.split(".", 1)[1] for n in members if n.startswith(key + ".")) == ["cls", "json", "png", "txt"]
    study = open_dataset(str(made / "iu"), "iu-xray")[0]
    assert json.loads(members[f"{key}.json"])["source_study_id"] == study.study_id
    assert members[f"{key}.txt"].decode() == study.report


def test_a_corpus_changed_since_planning_stops_the_run(made, tmp_path):
    shutil.copytree(made / "iu", tmp_path / "iu")
    producer, _ = production_spec(_config(made, tmp_path, captions=str(tmp_path / "iu")))
    producer.build(seed=5)  # the studies it was planned on: the same run
    (tmp_path / "iu" / "NLMCXR_reports" / "ecgen-radiology" / "1.xml").unlink()
    with pytest.raises(BadInputError, match="its studies changed since this run was planned"):
        producer.build(seed=5)


def _refused(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


CASES = {"not-a-text-to-image-bundle": "a xraygan-cgan bundle makes images, not X-rays from reports",
         "count-past-the-corpus": f"holds {COUNT} iu-xray reports, fewer than --count {COUNT + 1}",
         "captions-without-layout": "captions and layout go together",
         "captions-with-labels": "the labels come from each report",
         "captions-with-reports": "the labels come from each report, which is the corpus's own"}


@pytest.mark.parametrize("case, expected", [pytest.param(c, e, id=c) for c, e in CASES.items()])
def test_captions_refusals(made, tmp_path, capsys, case, expected):
    argv = ["produce", "--captions", str(made / "iu"), "--layout", "iu-xray", "--bundle", str(made / "justify"),
            "--count", "2", "--out", str(tmp_path / "run")]
    if case == "not-a-text-to-image-bundle":
        assert main(["bundle", "init", "xraygan-cgan", "--out", str(tmp_path / "c"), "--size", "16",
                     "--width", "2"]) == 0
        argv[argv.index("--bundle") + 1] = str(tmp_path / "c")
    elif case == "count-past-the-corpus":
        argv[argv.index("--count") + 1] = str(COUNT + 1)
    elif case == "captions-without-layout":
        argv[3:5] = []
    elif case == "captions-with-labels":
        argv += ["--labels", "balanced"]
    else:
        argv += ["--reports", str(made / "justify")]
    capsys.readouterr()
    assert expected in _refused(capsys, argv) and not (tmp_path / "run").exists()
