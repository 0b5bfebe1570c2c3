"""The run report: metrics measured on a real run and rendered into one self-contained HTML page."""

import json
import re

import numpy as np
import pytest

from factory.config import ProduceConfig
from factory.data.phantoms.dataset import PhantomCxrDataset
from factory.evaluate.run_report import evaluate_run, jsonable
from factory.produce.runs import run_production

SIZE = 32


@pytest.fixture(scope="module")
def judge_url(small_judge):
    """The session's small judge (tests/conftest.py): the report needs a trained judge, any small one serves."""
    return small_judge[0]


@pytest.fixture(scope="module")
def phantom_run(ray_local, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "pairs")
    run_production(ProduceConfig(source="phantom-cxr", count=120, size=SIZE, shard_size=40, out=out, seed=5),
                   progress=False)
    return out


def test_report_renders_every_part_and_catches_copies(judge_url, phantom_run, tmp_path):
    # The run's phantoms are seed 5, indices 0..119: the first 60 of them are planted as the
    # "training set", so the audit must flag those as copies and (nearly) nothing else.
    training = PhantomCxrDataset(60, size=SIZE, seed=5)
    augmentation = {"plot_png": "iVBORw0KGgo=", "table_html": "<table id=augment-table></table>"}
    result = evaluate_run(phantom_run, str(tmp_path / "report.html"), judge_url=judge_url, train=training,
                          count=120, real_count=120, augmentation=augmentation, progress=False)
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page
    for section in ("samples", "image-metrics", "report-metrics", "labels", "memorization", "augmentation", "settings"):
        assert f"id={section}>" in page, section
    assert len(re.findall(r"<div class=card id=sample-\d+>", page)) == 24
    assert len(re.findall(r"src='data:image/png;base64,", page)) >= 24 + 3  # grid, label and audit histograms
    assert "<table id=augment-table>" in page and "http://" not in page and "https://" not in page

    metrics = json.loads((tmp_path / "report.json").read_text())["metrics"]
    assert metrics == jsonable(result["metrics"])
    pixels = metrics["memorization"]["spaces"]["pixels"]
    flagged = {item["index"] for item in pixels["flagged"]}
    assert set(range(60)) <= flagged and len(flagged - set(range(60))) <= 3
    assert metrics["reports"]["labeler"]["agreement"] > 0.95  # phantom reports state their own labels
    images = metrics["images"]
    assert np.isfinite([images["fid"], images["fid_real_vs_real"], images["inception_score"]]).all()
