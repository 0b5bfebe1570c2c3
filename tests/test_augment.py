"""factory.evaluate.augment: EMIXER's augmentation study on a tiny phantom set, where the "synthetic" run
is produced from the phantom itself (other studies of the same simulator). Checks the result's
structure, that S=0 is the real-only baseline, determinism (same seeds, same numbers, whatever else is
in the study), the table and the plot on one seed; that adding the run helps a classifier that has only
8 real studies is a measurement over 3 seeds and 400 test studies, marked slow."""

import json
import math

import numpy as np
import pytest
import torch

from factory.data.labels import CXR_LABELS
from factory.data.phantoms.dataset import PhantomCxrDataset
from factory.errors import BadInputError
from factory.evaluate.augment import augmentation_study, plot, real_split, table_markdown, write_study
from factory.produce.producers import phantom_pairs
from factory.produce.writer import write_run
from shard_helpers import spec

SIZE = 32  # the smallest side the judge's ResNet takes
TINY = dict(real_counts=[8], test_count=64, epochs=3, batch_size=16, size=SIZE, progress=False)
PNG = b"\x89PNG\r\n\x1a\n"
SEEDS = [1]
EPOCH_SIZE = 8 + 64  # the main study's default (max R + max S), given explicitly to the re-runs


@pytest.fixture(scope="module")
def one_thread():
    # The CI machine's cores are shared; one intra-op thread is faster there than oversubscribed ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("augment") / "phantom-run")
    write_run(phantom_pairs(9, range(80), size=SIZE), url, spec(count=80, shard_size=32, run_id="phantom-run", seed=9),
              progress=False)
    return url


@pytest.fixture(scope="module")
def real():
    return PhantomCxrDataset(count=600, size=SIZE, seed=3)


@pytest.fixture(scope="module")
def study(one_thread, real, phantom_run):
    return augmentation_study(real, phantom_run, synthetic_counts=[0, 64], seeds=SEEDS, **TINY)


def run_of(result, seed, synthetic):
    return next(r for r in result["runs"] if r["seed"] == seed and r["synthetic"] == synthetic)


@pytest.mark.slow
def test_synthetic_phantoms_help(one_thread, real, phantom_run):
    # 400 held-out studies: with 64 the AUC of one seed moves by a few hundredths with the CPU's float kernels.
    seeds = [0, 1, 2]
    study = augmentation_study(real, phantom_run, synthetic_counts=[0, 64], seeds=seeds, **{**TINY, "test_count": 400})
    _, augmented = study["arms"]
    # 8 real studies teach a from-scratch ResNet next to nothing (macro-AUC about 0.5); 64 more of the same
    # simulator teach it something in the same 15 updates (here +0.02 to +0.07, seed by seed).
    assert augmented["delta_macro_auc"]["mean"] > 0.02
    assert all(run_of(study, s, 64)["macro_auc"] > run_of(study, s, 0)["macro_auc"] for s in seeds)


def test_result_structure(study):
    settings = study["settings"]
    assert settings["real_counts"] == [8] and settings["synthetic_counts"] == [0, 64] and settings["seeds"] == SEEDS
    assert settings["updates_per_arm"] == 3 * math.ceil(EPOCH_SIZE / 16) and settings["label_names"] == list(CXR_LABELS)
    assert settings["synthetic"]["count"] == 80 and settings["synthetic"]["run_id"] == "phantom-run"
    assert [(a["real"], a["synthetic"]) for a in study["arms"]] == [(8, 0), (8, 64)]
    assert len(study["runs"]) == 2
    for arm in study["arms"]:
        assert arm["seeds"] == 1 and set(arm["auc"]) == set(CXR_LABELS)
        assert 0.0 <= arm["macro_auc"]["mean"] <= 1.0
        assert arm["macro_auc"]["mean"] == pytest.approx(np.mean([run_of(study, s, arm["synthetic"])["macro_auc"]
                                                                  for s in SEEDS]))
    json.dumps(study)  # JSON-ready (undefined AUCs are None, not NaN)
    baseline, augmented = study["arms"]
    assert baseline["delta_macro_auc"]["mean"] == 0.0
    assert augmented["delta_macro_auc"]["mean"] == pytest.approx(run_of(study, 1, 64)["macro_auc"]
                                                                 - run_of(study, 1, 0)["macro_auc"])


def test_train_and_test_studies_are_disjoint_per_seed(real):
    for seed in (0, 1, 2):
        pool, test = real_split(len(real), 100, 64, seed)
        assert len(pool) == 100 and len(test) == 64 and not set(pool) & set(test)
    assert not np.array_equal(real_split(len(real), 100, 64, 0)[1], real_split(len(real), 100, 64, 1)[1])


def test_zero_synthetic_is_the_real_only_baseline_and_runs_are_deterministic(study, real, phantom_run):
    # S=0 of seed 1 equals a study with no synthetic run at all; S=64 of seed 1 comes out the same
    # when studied alone: each (seed, R, S) depends on its seed and the budget only.
    alone = augmentation_study(real, None, synthetic_counts=[0], seeds=[1], epoch_size=EPOCH_SIZE, **TINY)
    again = augmentation_study(real, phantom_run, synthetic_counts=[64], seeds=[1], epoch_size=EPOCH_SIZE, **TINY)
    for result, synthetic in ((alone, 0), (again, 64)):
        got, want = run_of(result, 1, synthetic), run_of(study, 1, synthetic)
        assert got["macro_auc"] == want["macro_auc"] and got["auc"] == want["auc"]
        assert got["accuracy"] == want["accuracy"] and got["final_loss"] == want["final_loss"]
    assert alone["settings"]["synthetic"]["run_id"] is None and alone["arms"][0]["macro_auc"]["std"] is None


def test_table_plot_and_written_study(study, tmp_path):
    table = table_markdown(study)
    assert "| 8 | 64 | 8 |" in table and "Δ vs S=0" in table and "| Cardiomegaly |" in table
    path = plot(study, str(tmp_path / "augment.png"))
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG
    urls = write_study(study, str(tmp_path / "study"))
    with open(urls["json"]) as handle:
        assert json.load(handle)["runs"] == study["runs"]
    with open(urls["table"], encoding="utf-8") as handle:
        assert handle.read().strip() == table
    with open(urls["plot"], "rb") as handle:
        assert handle.read(8) == PNG


def test_bad_arguments_are_refused(real, phantom_run):
    with pytest.raises(BadInputError, match="too few"):
        augmentation_study(real, phantom_run, real_counts=[590], test_count=64, synthetic_counts=[0], progress=False)
    with pytest.raises(BadInputError, match="need a synthetic run"):
        augmentation_study(real, None, real_counts=[8], test_count=16, synthetic_counts=[0, 8], progress=False)
    with pytest.raises(BadInputError, match="only 80 run samples"):
        augmentation_study(real, phantom_run, real_counts=[8], test_count=16, synthetic_counts=[100], size=SIZE,
                           progress=False)
    with pytest.raises(BadInputError, match="real_counts"):
        augmentation_study(real, phantom_run, real_counts=[0], synthetic_counts=[0], progress=False)
