"""Learning curves of `medsynth bench train emixer` as one PNG, drawn with Pillow (no plotting library).

Four panels over training CPU-minutes: judge macro-AUC on generated images (with the judge's AUC on
the real phantoms and the 0.75 minimum), FID in judge-feature space (log scale, with real-vs-real),
labeler agreement of the generated reports (exact match with the 0.70 minimum, micro and macro F1),
and BLEU-1 (with the phantom writer's own rewording of the real reports); below them, generated
samples of the last point.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL_W, PANEL_H = 520, 330
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 62, 16, 34, 46
COLOURS = {"synthetic": (31, 119, 180), "real": (44, 160, 44), "target": (214, 39, 40),
           "f1": (255, 127, 14), "macro_f1": (148, 103, 189)}


class Panel:
    """One chart: data coordinates mapped into a box of the canvas."""

    def __init__(self, draw: ImageDraw.ImageDraw, origin: tuple[int, int], title: str, x_max: float,
                 y_range: tuple[float, float], log: bool = False, x_label: str = "training CPU-minutes",
                 legend_low: bool = False):
        self.draw, self.log = draw, log
        self.font = ImageFont.load_default()
        x0, y0 = origin
        self.left, self.top = x0 + MARGIN_L, y0 + MARGIN_T
        self.right, self.bottom = x0 + PANEL_W - MARGIN_R, y0 + PANEL_H - MARGIN_B
        self.x_max = x_max if x_max > 0 else 1.0
        low, high = (math.log10(v) for v in y_range) if log else y_range
        self.y_low, self.y_high = low, high if high > low else low + 1
        draw.text((x0 + MARGIN_L, y0 + 10), title, fill="black", font=self.font)
        draw.rectangle([self.left, self.top, self.right, self.bottom], outline=(90, 90, 90))
        draw.text(((self.left + self.right) // 2 - 50, self.bottom + 26), x_label, fill="black", font=self.font)
        self._ticks()
        self.legend_row = 0
        self.legend_low = legend_low  # legend in the lower right corner, where rising curves leave room

    def _x(self, x: float) -> float:
        return self.left + (self.right - self.left) * x / self.x_max

    def _y(self, y: float) -> float:
        value = math.log10(max(y, 1e-12)) if self.log else y
        fraction = (value - self.y_low) / (self.y_high - self.y_low)
        return self.bottom - (self.bottom - self.top) * min(max(fraction, 0.0), 1.0)

    def _ticks(self) -> None:
        for i in range(6):
            x = self.x_max * i / 5
            px = self._x(x)
            self.draw.line([px, self.bottom, px, self.bottom + 4], fill="black")
            self.draw.text((px - 10, self.bottom + 8), f"{x:.0f}" if self.x_max >= 5 else f"{x:.1f}", fill="black",
                           font=self.font)
        if self.log:
            values = [10.0 ** e for e in range(math.floor(self.y_low), math.ceil(self.y_high) + 1)
                      if self.y_low - 1e-9 <= e <= self.y_high + 1e-9]
        else:
            values = list(np.linspace(self.y_low, self.y_high, 6))
        for value in values:
            py = self._y(value)
            self.draw.line([self.left - 4, py, self.left, py], fill="black")
            self.draw.line([self.left, py, self.right, py], fill=(232, 232, 232))
            self.draw.text((self.left - 48, py - 6), f"{value:g}" if self.log else f"{value:.2f}", fill="black",
                           font=self.font)

    def series(self, xs: Sequence[float], ys: Sequence[float], colour, label: str) -> None:
        points = [(self._x(x), self._y(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if len(points) > 1:
            self.draw.line(points, fill=colour, width=2)
        for px, py in points:
            self.draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        self._legend(colour, label, dashed=False)

    def level(self, y: float | None, colour, label: str, dotted: bool = False) -> None:
        """A horizontal reference line, dashed (or dotted)."""
        if y is None or not math.isfinite(y):
            return
        py = self._y(y)
        step, ink = (4, 2) if dotted else (10, 6)
        x = self.left
        while x < self.right:
            self.draw.line([x, py, min(x + ink, self.right), py], fill=colour, width=2)
            x += step + ink
        self._legend(colour, label, dashed=True)

    def _legend(self, colour, label: str, dashed: bool) -> None:
        x, y = self.right - 190, self.top + 8 + 14 * self.legend_row
        if self.legend_low:
            y = self.bottom - 8 - 14 * 6 + 14 * self.legend_row  # room for six entries
        if dashed:
            self.draw.line([x, y + 6, x + 7, y + 6], fill=colour, width=2)
            self.draw.line([x + 11, y + 6, x + 18, y + 6], fill=colour, width=2)
        else:
            self.draw.line([x, y + 6, x + 18, y + 6], fill=colour, width=2)
        self.draw.text((x + 24, y), label, fill="black", font=self.font)
        self.legend_row += 1


def plot_learning(result: dict[str, Any], images: np.ndarray | None, path: str) -> None:
    """Write the four learning-curve panels (and up to 16 final samples) of a learning result."""
    points, real = result["points"], result["real"]
    xs = [p["train_cpu_minutes"] for p in points]
    x_max = max(max(xs), 1e-3) * 1.04
    strip = 0 if images is None else 1
    tile = 64
    canvas = Image.new("RGB", (2 * PANEL_W, 2 * PANEL_H + 40 + strip * (tile + 30)), "white")
    draw = ImageDraw.Draw(canvas)
    # The final point is the last inside the budget; a segment that overshot it adds later points.
    final = result["final"]
    past = [p["step"] for p in points if p.get("over_budget")]
    draw.text((12, 12), f"EMIXER on phantom chest X-rays, {result['settings']['size']} px, "
                        f"{result['settings']['workers']} workers: step {final['step']} at "
                        f"{final['train_cpu_minutes']:.1f} training CPU-minutes"
                        + (f" (past the budget: step{'s' * (len(past) > 1)} {', '.join(map(str, past))})" if past else ""),
              fill="black", font=ImageFont.load_default())

    auc = Panel(draw, (0, 40), "judge macro-AUC, generated images vs conditioning labels", x_max, (0.4, 1.0))
    auc.series(xs, [p["macro_auc"] for p in points], COLOURS["synthetic"], "generated")
    auc.level(real["real_macro_auc"], COLOURS["real"], "real held-out phantoms")
    auc.level(result["minimum"]["synthetic_macro_auc"]["target"], COLOURS["target"], "minimum", dotted=True)

    fids = [p["fid"] for p in points] + [real["real_vs_real_fid"]]
    fid = Panel(draw, (PANEL_W, 40), "FID in judge-feature space (log)", x_max,
                (10 ** math.floor(math.log10(max(min(fids), 1e-3))), 10 ** math.ceil(math.log10(max(fids)))), log=True)
    fid.series(xs, [p["fid"] for p in points], COLOURS["synthetic"], "generated vs real")
    fid.level(real["real_vs_real_fid"], COLOURS["real"], "real vs real")

    lab = Panel(draw, (0, 40 + PANEL_H), "clinical efficacy of generated reports (labeler F1)", x_max, (0.0, 1.0))
    lab.series(xs, [p["ce"]["micro"]["f1"] for p in points], COLOURS["synthetic"], "micro F1, eight findings")
    lab.series(xs, [p["ce"]["macro"]["f1"] for p in points], COLOURS["macro_f1"], "macro F1")
    lab.series(xs, [p["ce"]["exact_match"] for p in points], COLOURS["f1"], "exact match (secondary)")
    lab.level(result["minimum"]["ce_micro_f1"]["target"], COLOURS["target"], "minimum (micro F1)", dotted=True)
    if "judge_reading_real_images_ce" in real:
        lab.level(real["judge_reading_real_images_ce"]["micro"]["f1"], COLOURS["real"],
                  "judge reading real images (micro F1)")

    bleu = Panel(draw, (PANEL_W, 40 + PANEL_H), "BLEU-1 of generated vs real reports", x_max, (0.0, 1.0))
    bleu.series(xs, [p["bleu_1"] for p in points], COLOURS["synthetic"], "generated")
    bleu.level(real["rewritten_reports"]["bleu_1"], COLOURS["real"], "real findings, reworded")

    if images is not None:
        top = 40 + 2 * PANEL_H
        draw.text((12, top + 4), f"generated at step {result['final']['step']} (conditioned on held-out labels)",
                  fill="black", font=ImageFont.load_default())
        for i, image in enumerate(images[:16]):
            tile_image = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((tile, tile)).convert("RGB")
            canvas.paste(tile_image, (12 + (i % 16) * (tile + 0), top + 20 + (i // 16) * tile))
    save_png(canvas, path)


def save_png(canvas: Image.Image, path: str) -> None:
    """Write the figure, making its folder if need be."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
