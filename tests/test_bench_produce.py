"""`medsynth bench produce` pieces that run without a pool: medians over rounds and per-round ratios."""

import pytest

from factory.bench.produce import median_stage, round_ratios


def _round(g1, g2, p1, p2, raydata):
    return {"generator alone, 1 process, actor malloc": {"samples_per_s": g1},
            "generator alone, 2 processes, actor malloc": {"samples_per_s": g2},
            "factory pool, 1 actor, local": {"samples_per_s": p1 * 0.8, "steady_samples_per_s": p1},
            "factory pool, 2 actors, local": {"samples_per_s": p2 * 0.8, "steady_samples_per_s": p2},
            "ray data map_batches + write_webdataset": {"samples_per_s": raydata}}


def test_median_stage_takes_each_number_over_rounds():
    assert median_stage([{"samples_per_s": 3.0, "seconds": 1.0}, {"samples_per_s": 1.0, "seconds": 5.0},
                         {"samples_per_s": 2.0, "seconds": 2.0}]) == {"samples_per_s": 2.0, "seconds": 2.0, "rounds": 3}


def test_round_ratios_compare_measurements_of_the_same_round():
    stages = {"generator alone, 1 process, default malloc": {"samples_per_s": 20.0},
              "naive loop (1 process)": {"samples_per_s": 16.0}}
    ratios = round_ratios(_round(g1=40.0, g2=80.0, p1=36.0, p2=72.0, raydata=48.0), stages)
    assert ratios["malloc: actor settings / default (generator)"] == 2.0
    assert ratios["pool 1 actor / generator alone (1 process), steady"] == pytest.approx(0.9)
    assert ratios["pool 2 actors / generator alone (2 processes), steady"] == pytest.approx(0.9)
    assert ratios["pool 2 actors / pool 1 actor, steady"] == 2.0
    assert ratios["pool 2 actors / ray data, end to end"] == pytest.approx(72 * 0.8 / 48)
    assert ratios["pool 2 actors / naive loop, end to end"] == pytest.approx(72 * 0.8 / 16)
