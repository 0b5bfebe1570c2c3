"""`medsynth bench train emixer` pieces that run without training: the CPU meter, the segment
planner, the segment's bundles, macro F1 through the labeler, the reader's ceiling, and the
learning-curve PNGs (EMIXER's, and XRAY-GAN's from one or more runs)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from factory.bench.learning_plot import plot_learning
from factory.bench.train_emixer import (CpuMeter, SegmentPlanner, bench_settings, macro_f1, reading_scores,
                                        segment_bundles)
from factory.data.labels import CXR_LABELS


def test_cpu_meter_counts_a_child_process_after_it_ends():
    meter = CpuMeter(interval=0.05)
    before = meter.seconds()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    spent = meter.seconds() - before
    meter.close()
    assert 0.4 < spent < 5.0, spent  # the child's CPU (last seen before it ended), plus the interpreter's start


def test_planner_shares_what_is_left_evenly_after_start_up():
    planner = SegmentPlanner(budget_s=1000.0, segments=4, per_step_s=5.0, startup_s=50.0)
    assert planner.next_steps(used_s=0.0, done_segments=0) == 40  # (1000 / 4 - 50) / 5
    planner.observe(steps=40, segment_cpu_s=300.0, step_cpu_s=240.0)  # 6 CPU-s a step, 60 of start-up
    assert planner.next_steps(used_s=300.0, done_segments=1) == int((700 / 3 - 60) / 6)
    assert planner.next_steps(used_s=990.0, done_segments=3) == 0  # nothing left after start-up
    assert planner.next_steps(used_s=0.0, done_segments=4) == 0
    cautious = SegmentPlanner(budget_s=1000.0, segments=4, per_step_s=5.0, startup_s=50.0, margin=0.25)
    assert cautious.next_steps(used_s=0.0, done_segments=0) == 32  # (1000 / 4 - 50) / (5 x 1.25)


def test_macro_f1_reads_reports_with_the_labeler():
    labels = np.zeros((2, len(CXR_LABELS)), np.float32)
    labels[0, CXR_LABELS.index("Cardiomegaly")] = 1
    labels[1, CXR_LABELS.index("No Finding")] = 1
    right = ["The heart is enlarged. No pleural effusion or pneumothorax.", "No acute cardiopulmonary process."]
    assert macro_f1(right, labels) == 1.0
    assert macro_f1(right[::-1], labels) == 0.0


def test_learning_plot_writes_four_panels_and_samples(tmp_path):
    points = [{"step": s, "train_cpu_minutes": m, "macro_auc": a, "fid": f, "bleu_1": b,
               "ce": {"micro": {"f1": g}, "macro": {"f1": g / 2}, "exact_match": g / 3}}
              for s, m, a, f, b, g in [(0, 0.0, 0.5, 400.0, 0.0, 0.17), (100, 10.0, 0.62, 90.0, 0.2, 0.2),
                                       (300, 29.0, 0.7, 40.0, 0.4, 0.3)]]
    result = {"points": points, "final": points[-1], "settings": {"size": 64, "workers": 2},
              "cpu_minutes": {"training": 29.0},
              "real": {"real_macro_auc": 0.88, "real_vs_real_fid": 8.0, "rewritten_reports": {"bleu_1": 0.53}},
              "minimum": {"synthetic_macro_auc": {"target": 0.75}, "ce_micro_f1": {"target": 0.5}}}
    path = tmp_path / "curves.png"
    plot_learning(result, np.zeros((16, 64, 64), np.uint8), str(path))
    with Image.open(path) as image:
        assert image.size[0] == 1040 and image.size[1] > 660


def test_segment_bundles_are_its_snapshots_in_order_then_its_end(tmp_path):
    snapshots = tmp_path / "snapshots"
    for step in (3, 6, 9, 12):
        (snapshots / f"step-{step:06d}").mkdir(parents=True)
    found = segment_bundles(str(snapshots), after=3, end=12, end_bundle="END")
    assert found == [(6, str(snapshots / "step-000006")), (9, str(snapshots / "step-000009")), (12, "END")]
    assert segment_bundles(str(tmp_path / "none"), after=0, end=5, end_bundle="END") == [(5, "END")]


def test_reading_scores_threshold_and_exact_match():
    labels = np.array([[1, 0, np.nan], [0, 1, 0]], np.float32)
    probabilities = np.array([[0.9, 0.2, 0.1], [0.6, 0.7, 0.1]], np.float32)
    assert reading_scores(probabilities, labels) == {"agreement": 0.5, "accuracy": 5 / 6}


def test_xraygan_evaluation_points_reach_the_runs_timeline_as_their_numeric_scores(tmp_path):
    from factory.bench.segments import scalars as evaluation_scalars
    from factory.train.progress import events_url, record_evaluation

    point = {"step": 40, "train_cpu_minutes": 3.5, "fid": 12.5, "kept": 0.75, "macro_auc": 0.81,
             "auc": {"Edema": 0.9}, "losses": {"d_real": 0.4}, "over_budget": False, "_keep": np.ones(2, bool)}
    assert evaluation_scalars(point) == {"fid": 12.5, "kept": 0.75, "macro_auc": 0.81}
    record_evaluation(str(tmp_path), "xraygan-cgan-bench", 40, evaluation_scalars(point))
    assert any(name.endswith(".eval") for name in os.listdir(events_url(str(tmp_path), "xraygan-cgan-bench")))


def test_bench_settings_record_judge_count_and_epochs_only_for_a_judge_trained_here():
    from argparse import Namespace

    args = Namespace(judge=None, judge_count=5000, judge_epochs=8, size=64, work="/tmp/w")
    assert bench_settings(args, {"trained_here": True}) == {"judge": None, "judge_count": 5000, "judge_epochs": 8,
                                                           "size": 64}
    args.judge = "/bundles/judge"  # given: its own count and epochs are in the JSON's `judge` block
    assert bench_settings(args, {"trained_here": False}) == {"judge": "/bundles/judge", "judge_count": None,
                                                            "judge_epochs": None, "size": 64}


def _xraygan_result(model, judge="judge-a"):
    lower = 0.1 if model == "xraygan-ucgan" else 0.0  # the two models' curves apart
    points = [{"step": s, "train_cpu_minutes": m, "fid": f * (1 + 2 * lower), "kept": k, "macro_auc": a and a - lower}
              for s, m, f, k, a in ((0, 0.0, 400.0, 0.0, None), (100, 15.0, 120.0, 0.3, 0.7), (200, 29.0, 40.0, 0.5, 0.82))]
    result = {"judge": {"bundle_id": judge}, "settings": {"eval_count": 500, "size": 64, "seed": 0, "workers": 2,
                                                         "minutes": 30.0},
              "real": {"real_macro_auc": 0.83, "real_vs_real_fid": 5.0}, model: {"points": points},
              "minimum": {"cgan_judge_macro_auc": {"target": 0.8}} if model == "xraygan-cgan" else {},
              "emixer_image_branch": {"macro_auc": 0.9, "fid": 49.0, "train_cpu_minutes": 28.5}}
    if model == "xraygan-ucgan":
        runs = [{"curve": [{"step": 100, "macro_auc": 0.70 + seed / 100}, {"step": 400, "macro_auc": 0.80}]}
                for seed in range(3)]
        pseudo = [{"curve": [{"step": c["step"], "macro_auc": c["macro_auc"] - 0.05} for c in run["curve"]]}
                  for run in runs]
        result["table4"] = {"real_images": 500, "seeds": 3,
                            "arms": {"real only": {"runs": runs}, "t=0.8": {"runs": pseudo}}}
    return result


def test_xraygan_plot_draws_both_models_and_refuses_other_judges(tmp_path):
    from factory.bench.train_xraygan import MODELS, replot
    from factory.bench.xraygan_plot import MODEL_COLOURS, plot_xraygan

    path = tmp_path / "xraygan.png"
    plot_xraygan([_xraygan_result("xraygan-cgan"), _xraygan_result("xraygan-ucgan")], str(path), MODELS)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    inked = {name: int((pixels == colour).all(axis=1).sum()) for name, colour in MODEL_COLOURS.items()}
    # A legend entry alone inks about 36 pixels; curves with their dots ink many more.
    assert inked["xraygan-cgan"] > 200 and inked["xraygan-ucgan"] > 200 and inked["emixer"] > 100, inked

    files = []
    for i, judge in enumerate(("judge-a", "judge-b")):
        files.append(tmp_path / f"run{i}.json")
        files[-1].write_text(json.dumps(_xraygan_result(MODELS[i], judge)))
    with pytest.raises(SystemExit, match="scored differently"):
        replot([str(f) for f in files], str(tmp_path / "mixed.png"))
    assert not (tmp_path / "mixed.png").exists()


def test_table4_alone_is_drawn_as_its_panel_only(tmp_path):
    from factory.bench.learning_plot import PANEL_H, PANEL_W
    from factory.bench.train_xraygan import MODELS
    from factory.bench.xraygan_plot import ARM_COLOURS, plot_xraygan

    result = _xraygan_result("xraygan-ucgan")
    del result["xraygan-ucgan"]  # `--models none`: Table 4 and nothing else
    result["table4"].update(steps=400, batch=16, unlabelled_images=4500)
    path = tmp_path / "table4.png"
    plot_xraygan([result], str(path), MODELS)
    with Image.open(path) as image:
        assert image.size == (PANEL_W, PANEL_H + 40)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    for colour in ARM_COLOURS[:2]:  # both arms' curves, not just their legend entries
        assert (pixels == colour).all(axis=1).sum() > 200


def test_emixer_row_of_another_judge_is_marked_and_left_out_of_the_figure(tmp_path):
    from factory.bench.train_xraygan import MODELS, emixer_image_branch
    from factory.bench.xraygan_plot import MODEL_COLOURS, plot_xraygan

    source = tmp_path / "train_emixer.json"
    source.write_text(json.dumps({"judge": {"bundle_id": "judge-e"}, "settings": {"minutes": 30.0},
                                  "final": {"macro_auc": 0.9, "fid": 49.0, "train_cpu_minutes": 28.5}}))
    assert emixer_image_branch(str(source), "judge-e")["same_judge"]
    other = emixer_image_branch(str(source), "judge-a")
    assert other["same_judge"] is False and other["judge_bundle_id"] == "judge-e"

    result = _xraygan_result("xraygan-cgan") | {"emixer_image_branch": other}
    path = tmp_path / "xraygan.png"
    plot_xraygan([result], str(path), MODELS)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert not (pixels == MODEL_COLOURS["emixer"]).all(axis=1).any()
