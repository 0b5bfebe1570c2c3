"""Learning curves of `medsynth bench train xraygan` as one PNG, drawn with learning_plot's Pillow panels.

Four panels: the judge's macro-AUC on each generator's images for their (conditioning or pseudo)
labels over training CPU-minutes, with EMIXER's image branch at the end of its own run (when the same
judge scored it), the judge on the real phantoms and the CGAN minimum; FID in judge features (log
scale) with real-vs-real; the share of UCGAN's images C keeps at t; and Table 4: C's macro-AUC on
held-out real phantoms over its training steps, the mean over seeds of each arm. A run of Table 4
alone (`--models none`) gets that panel only. Several benchmark JSONs (say, one run per model) can
share one figure when they were scored by the same judge on the same held-out phantoms.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from factory.bench.learning_plot import COLOURS, PANEL_H, PANEL_W, Panel, save_png

MODEL_COLOURS = {"xraygan-cgan": (31, 119, 180), "xraygan-ucgan": (255, 127, 14), "emixer": (148, 103, 189)}
ARM_COLOURS = [(44, 160, 44), (23, 190, 207), (188, 189, 34), (214, 39, 40), (227, 119, 194), (127, 127, 127)]


def comparable(results: Sequence[dict[str, Any]]) -> None:
    """Raise ValueError unless every result was scored by the same judge on the same held-out phantoms."""
    if not results:
        raise ValueError("no benchmark results to draw")
    keys = {(r["judge"]["bundle_id"], r["settings"]["eval_count"], r["settings"]["size"], r["settings"]["seed"])
            for r in results}
    if len(keys) > 1:
        raise ValueError(f"the results were scored differently (judge, eval count, size, seed): {sorted(keys)}")


def plot_xraygan(results: Sequence[dict[str, Any]], path: str, models: Sequence[str]) -> None:
    """Write the four panels of one or more `bench train xraygan` results (dicts as in its JSON)."""
    comparable(results)
    curves = {m: r[m] for r in results for m in models if r.get(m)}
    table4 = next((r["table4"] for r in reversed(results) if r.get("table4")), None)
    if not curves and table4:  # Table 4 alone (`--models none`): its panel only
        canvas = Image.new("RGB", (PANEL_W, PANEL_H + 40), "white")
        draw = ImageDraw.Draw(canvas)
        draw.text((12, 12), f"XRAY-GAN Table 4 on phantom chest X-rays, {results[0]['settings']['size']} px, "
                            f"{table4['steps']} steps of batch {table4['batch']}", fill="black",
                  font=ImageFont.load_default())
        table4_panel(draw, (0, 40), table4)
        save_png(canvas, path)
        return
    # EMIXER's point only where its own benchmark was scored by this judge (older JSONs did not record it).
    emixer = next((r["emixer_image_branch"] for r in reversed(results) if r.get("emixer_image_branch")
                   and r["emixer_image_branch"].get("same_judge", True)), None)
    real = results[0]["real"]
    minimum = next((r["minimum"]["cgan_judge_macro_auc"]["target"] for r in results
                    if "cgan_judge_macro_auc" in r.get("minimum", {})), None)

    xs_all = [p["train_cpu_minutes"] for c in curves.values() for p in c["points"]]
    if emixer:
        xs_all.append(emixer["train_cpu_minutes"])
    x_max = max(xs_all + [1e-3]) * 1.04
    canvas = Image.new("RGB", (2 * PANEL_W, 2 * PANEL_H + 40), "white")
    draw = ImageDraw.Draw(canvas)
    settings = results[0]["settings"]
    draw.text((12, 12), f"XRAY-GAN on phantom chest X-rays, {settings['size']} px, {settings['workers']} workers, "
                        f"{settings['minutes']:g} training CPU-minutes per model; judge {results[0]['judge']['bundle_id']}",
              fill="black", font=ImageFont.load_default())

    auc = Panel(draw, (0, 40), "judge macro-AUC, generated images vs their labels", x_max, (0.4, 1.0),
                legend_low=True)
    for model, curve in curves.items():
        points = curve["points"]
        auc.series([p["train_cpu_minutes"] for p in points], [p["macro_auc"] for p in points],
                   MODEL_COLOURS[model], model)
    if emixer:
        auc.series([emixer["train_cpu_minutes"]], [emixer["macro_auc"]], MODEL_COLOURS["emixer"],
                   "emixer image branch (end)")
    auc.level(real["real_macro_auc"], COLOURS["real"], "real held-out phantoms")
    if minimum is not None:
        auc.level(minimum, COLOURS["target"], "CGAN minimum", dotted=True)

    fids = [p["fid"] for c in curves.values() for p in c["points"]] + [real["real_vs_real_fid"]]
    if emixer:
        fids.append(emixer["fid"])
    fid = Panel(draw, (PANEL_W, 40), "FID in judge-feature space (log)", x_max,
                (10 ** math.floor(math.log10(max(min(fids), 1e-3))), 10 ** math.ceil(math.log10(max(fids)))), log=True)
    for model, curve in curves.items():
        points = curve["points"]
        fid.series([p["train_cpu_minutes"] for p in points], [p["fid"] for p in points], MODEL_COLOURS[model], model)
    if emixer:
        fid.series([emixer["train_cpu_minutes"]], [emixer["fid"]], MODEL_COLOURS["emixer"], "emixer image branch")
    fid.level(real["real_vs_real_fid"], COLOURS["real"], "real vs real")

    kept = Panel(draw, (0, 40 + PANEL_H), "share of UCGAN images C keeps at t", x_max, (0.0, 1.0))
    if "xraygan-ucgan" in curves:
        points = curves["xraygan-ucgan"]["points"]
        kept.series([p["train_cpu_minutes"] for p in points], [p["kept"] for p in points],
                    MODEL_COLOURS["xraygan-ucgan"], "kept share")

    if table4:
        table4_panel(draw, (PANEL_W, 40 + PANEL_H), table4)
    save_png(canvas, path)


def table4_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], table4: dict[str, Any]) -> None:
    """Table 4's C curves: each arm's macro-AUC on held-out real phantoms over C's steps, mean over seeds."""
    arms = table4["arms"]
    steps = sorted({c["step"] for arm in arms.values() for run in arm["runs"] for c in run.get("curve", [])})
    values = [c["macro_auc"] for arm in arms.values() for run in arm["runs"] for c in run.get("curve", [])]
    low = math.floor(min(values + [0.7]) * 20) / 20
    unlabelled = table4.get("unlabelled_images", 0)
    pool = f", {unlabelled} unlabelled" if unlabelled else ""
    panel = Panel(draw, origin, f"Table 4: C's macro-AUC on real phantoms ({table4['real_images']} real{pool}, "
                                f"mean of {table4['seeds']} seeds)", max(steps + [1]), (low, 1.0),
                  x_label="C's training steps")
    for colour, (name, arm) in zip(ARM_COLOURS, arms.items()):
        by_step: dict[int, list[float]] = {}
        for run in arm["runs"]:
            for c in run.get("curve", []):
                by_step.setdefault(c["step"], []).append(c["macro_auc"])
        xs = sorted(by_step)
        panel.series(xs, [float(np.mean(by_step[s])) for s in xs], colour, name)
