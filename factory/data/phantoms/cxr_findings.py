"""Findings of the chest X-ray phantom: how each is drawn from a seed and how it changes the film.

Severity runs from 0 (subtle: a blunted angle, a faint line, a small nodule) to 1 (florid). Every
finding's laterality here is the one written into its `Finding`, so image and report agree.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from factory.data.labels import CXR_LABELS, Finding
from factory.data.phantoms.cxr_anatomy import LUNG_AIR, SIDES, Chest, Masks, perihilar_haze
from factory.data.phantoms.cxr_canvas import Canvas, ramp

FINDING_NAMES = CXR_LABELS[1:]
DEFAULT_PREVALENCE: dict[str, float] = {
    "Cardiomegaly": 0.2,
    "Pleural Effusion": 0.2,
    "Pneumothorax": 0.15,
    "Consolidation/Pneumonia": 0.2,
    "Edema": 0.15,
    "Nodule/Mass": 0.2,
    "Atelectasis": 0.2,
    "Support Devices": 0.25,
}
DEVICES = ("ET tube", "NG tube", "central line", "PICC", "pacemaker", "chest tube")


def resolve_prevalence(prevalence: Mapping[str, float] | None) -> dict[str, float]:
    """Defaults overridden by the caller's mapping; unknown names and values outside [0, 1] are errors."""
    merged = dict(DEFAULT_PREVALENCE)
    for name, value in (prevalence or {}).items():
        if name not in DEFAULT_PREVALENCE:
            raise ValueError(f"unknown finding {name!r} in prevalence; choose from {', '.join(FINDING_NAMES)}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"prevalence of {name!r} must lie in [0, 1], got {value}")
        merged[name] = float(value)
    return merged


def sample_findings(rng: np.random.Generator, prevalence: Mapping[str, float]) -> list[Finding]:
    """Independent draws per finding, each with a severity, laterality and kind."""
    findings = []
    for name in FINDING_NAMES:
        # Every draw happens whether or not the finding is present, so changing one prevalence
        # leaves every other finding of the same study untouched.
        present = rng.random() < prevalence[name]
        severity = round(float(rng.random()), 3)
        pick, pick2 = rng.random(), rng.random()
        if not present:
            continue
        side = "right" if pick2 < 0.5 else "left"
        if name == "Cardiomegaly":
            findings.append(Finding(name, severity))
        elif name == "Pleural Effusion":
            findings.append(Finding(name, severity, "bilateral" if pick < 0.3 else side))
        elif name == "Pneumothorax":
            findings.append(Finding(name, severity, side))
        elif name == "Consolidation/Pneumonia":
            kind = "lobar" if pick < 0.45 else "patchy"
            lat = "bilateral" if kind == "patchy" and pick > 0.85 else side
            findings.append(Finding(name, severity, lat, kind))
        elif name == "Edema":
            findings.append(Finding(name, severity, "bilateral"))
        elif name == "Nodule/Mass":
            findings.append(Finding(name, severity, side, "nodule" if pick < 0.6 else "mass"))
        elif name == "Atelectasis":
            kind = "lobar" if pick < 0.3 else "plate-like"
            lat = "bilateral" if kind == "plate-like" and pick > 0.75 else side
            findings.append(Finding(name, severity, lat, kind))
        else:
            kind = DEVICES[min(int(pick * len(DEVICES)), len(DEVICES) - 1)]
            lat = None if kind in ("ET tube", "NG tube") else ("left" if kind == "pacemaker" and pick2 < 0.8 else side)
            findings.append(Finding(name, severity, lat, kind))
    return findings


def sides_of(finding: Finding) -> tuple[int, ...]:
    return (-1, 1) if finding.laterality == "bilateral" else (SIDES[finding.laterality],)


def adjust_chest(chest: Chest, findings: list[Finding]) -> None:
    """Findings that move anatomy (heart size, volume loss) act before anything is drawn."""
    for f in findings:
        if f.name == "Cardiomegaly":
            chest.ctr = 0.5 + 0.18 * f.severity
            chest.heart_h *= 1.0 + 0.15 * f.severity
        elif f.name == "Atelectasis":
            lobar = f.kind == "lobar"
            for side in sides_of(f):
                chest.dome[side] -= (0.05 + 0.08 * f.severity) if lobar else (0.015 + 0.04 * f.severity)
            if lobar:
                chest.med_x += sides_of(f)[0] * (0.015 + 0.03 * f.severity)


def draw_findings(canvas: Canvas, chest: Chest, masks: Masks, findings: list[Finding], rng: np.random.Generator) -> None:
    for f in findings:
        if f.name in DRAW:  # Cardiomegaly has no drawing of its own: adjust_chest sized the heart
            DRAW[f.name](canvas, chest, masks, f, rng)


def _effusion(canvas: Canvas, chest: Chest, masks: Masks, f: Finding, rng: np.random.Generator) -> None:
    x, y = canvas.x, canvas.y
    for side in sides_of(f):
        cx, _, ax, _ = chest.lung_ellipse(side)
        height = (0.05 + 0.3 * f.severity) * rng.uniform(0.85, 1.15)
        lateral = ramp((side * (x - cx) + ax) / (2 * ax))
        # The meniscus: fluid climbs higher against the lateral chest wall than medially.
        top = chest.costophrenic_y(side) - height * (0.3 + 0.7 * lateral * lateral)
        fluid = ramp((y - top) / (2 * canvas.px + 0.1 * height)) * masks.lung[side]
        canvas.density += (LUNG_AIR * (0.8 + 0.2 * f.severity)) * fluid
        masks.markings *= 1.0 - fluid


def _pneumothorax(canvas: Canvas, chest: Chest, masks: Masks, f: Finding, rng: np.random.Generator) -> None:
    x, y, px = canvas.x, canvas.y, canvas.px
    side = SIDES[f.laterality]
    cx, cy, ax, ay = chest.lung_ellipse(side)
    depth = 0.06 + 0.3 * f.severity
    # The collapsed lung shrinks towards the hilum, leaving the widest gap at the apex and laterally.
    ccx, ccy = cx - side * ax * depth * 0.5, cy + ay * depth * 0.6
    cax, cay = ax * (1 - depth * 0.8), ay * (1 - depth * 0.6)
    r = np.sqrt(((x - ccx) / cax) ** 2 + ((y - ccy) / cay) ** 2)
    lung = masks.lung[side]
    collapsed = ramp((1.0 - r) * (cax / (1.5 * px)))
    gap = lung * (1.0 - collapsed)
    canvas.density -= 0.05 * gap
    masks.markings *= 1.0 - gap
    pleural_line = ramp(1.0 - np.abs(r - 1.0) * (cax / (0.9 * px)))
    canvas.density += (0.1 + 0.12 * f.severity) * pleural_line * lung


def _consolidation(canvas: Canvas, chest: Chest, masks: Masks, f: Finding, rng: np.random.Generator) -> None:
    x, y = canvas.x, canvas.y
    amount = LUNG_AIR * (0.3 + 0.55 * f.severity)
    texture = 0.75 + 0.25 * masks.blotch
    for side in sides_of(f):
        lung = masks.lung[side]
        if f.kind == "lobar":
            # A lobe bounded by an oblique fissure: upper lobe above it, lower lobe below.
            fissure = chest.hilum_y + 0.25 * (side * (x - chest.med_x) - chest.med_w) + rng.normal(0, 0.04)
            upper = rng.random() < 0.4
            lobe = ramp(((fissure - y) if upper else (y - fissure)) / (3 * canvas.px))
            opacity = lobe * lung * texture
            if f.severity > 0.5:  # air bronchograms: aerated bronchi stand out against the dense lobe
                canvas.density -= 0.12 * masks.vessels_alt * opacity
            canvas.density += amount * opacity
        else:
            cx, cy, ax, ay = chest.lung_ellipse(side)
            for _ in range(int(rng.integers(2, 5))):
                bx, by = cx + rng.uniform(-0.6, 0.6) * ax, cy + rng.uniform(-0.3, 0.55) * ay
                rad = rng.uniform(0.06, 0.13) * (0.7 + 0.5 * f.severity)
                win, blob = canvas.disc(bx, by, rad, rad * rng.uniform(0.7, 1.2), edge_px=0.6 * rad / canvas.px)
                canvas.density[win] += amount * blob * lung[win] * texture[win]


def _edema(canvas: Canvas, chest: Chest, masks: Masks, f: Finding, rng: np.random.Generator) -> None:
    # Perihilar ("batwing") haze fading towards the periphery, and congested, indistinct vessels.
    haze = perihilar_haze(canvas, chest, masks.lung[-1] + masks.lung[1])
    canvas.density += (LUNG_AIR * (0.03 + 0.5 * f.severity)) * haze
    masks.markings *= 1.0 + 0.8 * f.severity
    if f.severity < 0.3:  # septal lines show only once the interstitium is clearly oedematous
        return
    # Kerley B lines: short horizontal septal lines reaching the lateral pleura at the bases.
    for side in (-1, 1):
        cx, _, ax, _ = chest.lung_ellipse(side)
        for _ in range(int(rng.integers(2, 4 + int(5 * f.severity)))):
            ly = chest.dome[side] - rng.uniform(0.02, 0.22)
            edge = cx + side * ax * np.sqrt(max(0.05, 1 - ((ly - chest.lung_ellipse(side)[1]) / chest.lung_ellipse(side)[3]) ** 2))
            length = rng.uniform(0.04, 0.08)
            canvas.stroke(np.array([[edge - side * 0.01, ly], [edge - side * (0.01 + length), ly]]),
                          width_px=1.0, amount=0.06 + 0.08 * f.severity)


def _nodule(canvas: Canvas, chest: Chest, masks: Masks, f: Finding, rng: np.random.Generator) -> None:
    side = SIDES[f.laterality]
    cx, cy, ax, ay = chest.lung_ellipse(side)
    lung = masks.lung[side]
    mass = f.kind == "mass"
    rad = rng.uniform(0.075, 0.13) if mass else rng.uniform(0.04, 0.065)
    amount = LUNG_AIR * ((0.55 + 0.4 * f.severity) if mass else (0.4 + 0.5 * f.severity))
    # Place it where there is aerated lung (not behind the heart or below the dome).
    for _ in range(20):
        px_, py_ = cx + rng.uniform(-0.65, 0.65) * ax, cy + rng.uniform(-0.75, 0.4) * ay
        row = int((canvas.to_image(np.float32(px_), np.float32(py_))[1] + 1) / canvas.px)
        col = int((canvas.to_image(np.float32(px_), np.float32(py_))[0] + 1) / canvas.px)
        if 0 <= row < canvas.size and 0 <= col < canvas.size and lung[row, col] > 0.9:
            break
    lobes = 3 if mass else 1  # a mass is lobulated: overlapping discs
    for k in range(lobes):
        ox, oy = (rng.normal(0, rad * 0.3, 2) if k else (0.0, 0.0))
        r = rad * (1.0 if k == 0 else rng.uniform(0.5, 0.8))
        win, disc = canvas.disc(px_ + ox, py_ + oy, r, r * rng.uniform(0.85, 1.15), edge_px=1.2)
        canvas.density[win] += amount * disc * np.maximum(lung[win], 0.5) / (1 if k == 0 else 2)


def _atelectasis(canvas: Canvas, chest: Chest, masks: Masks, f: Finding, rng: np.random.Generator) -> None:
    x, y, px = canvas.x, canvas.y, canvas.px
    for side in sides_of(f):
        cx, _, ax, _ = chest.lung_ellipse(side)
        lung = masks.lung[side]
        if f.kind == "lobar":
            # Collapsed lower lobe: a triangle of density from the hilum down to the medial dome.
            inner = side * (x - chest.med_x) - chest.med_w
            edge = chest.hilum_y + 0.1 + inner * rng.uniform(0.9, 1.4)
            opacity = ramp((y - edge) / (2 * px)) * lung
            canvas.density += (LUNG_AIR * (0.45 + 0.45 * f.severity)) * opacity
        else:
            for _ in range(int(rng.integers(1, 3 + int(2 * f.severity)))):
                ly = chest.dome[side] - rng.uniform(0.04, 0.2)
                x0 = cx + rng.uniform(-0.55, 0.2) * ax
                length = rng.uniform(0.2, 0.35) * ax / 0.3
                tilt = rng.uniform(-0.12, 0.12)
                canvas.stroke(np.array([[x0, ly], [x0 + side * length, ly + tilt * length]]),
                              width_px=max(1.0, (0.025 + 0.02 * f.severity) / px), amount=0.18 + 0.2 * f.severity)


def _device(canvas: Canvas, chest: Chest, masks: Masks, f: Finding, rng: np.random.Generator) -> None:
    px = canvas.px
    side = SIDES.get(f.laterality or "right", -1)
    amount = 0.15 + 0.6 * f.severity
    mx = chest.med_x
    jitter = rng.normal(0, 0.015, (8, 2))
    if f.kind == "ET tube":
        tip = chest.carina_y - rng.uniform(0.06, 0.2)
        pts = np.array([[mx, -1.05], [mx + 0.01, -0.75], [mx, tip]])
        canvas.stroke(pts, width_px=max(1.0, 0.024 / px), amount=amount)
    elif f.kind == "NG tube":
        stomach = chest.dome[1] + 0.18
        pts = np.array([[mx + 0.02, -1.05], [mx + 0.03, -0.4], [mx + 0.06, chest.dome[1] - 0.05],
                        [mx + 0.2, stomach], [mx + 0.35, stomach + 0.04]])
        canvas.stroke(pts + jitter[:5], width_px=max(1.0, 0.014 / px), amount=amount)
    elif f.kind == "central line":
        pts = np.array([[side * 0.24, -1.05], [side * 0.17, -0.72], [mx + side * 0.06, -0.45],
                        [mx + side * 0.04, chest.carina_y + rng.uniform(0.0, 0.12)]])
        canvas.stroke(pts + jitter[:4], width_px=max(1.0, 0.012 / px), amount=amount)
    elif f.kind == "PICC":
        pts = np.array([[side * 1.05, -0.46], [side * 0.72, -0.62], [side * 0.36, -0.64],
                        [mx + side * 0.1, -0.5], [mx - 0.03, chest.carina_y + rng.uniform(0.02, 0.15)]])
        canvas.stroke(pts + jitter[:5], width_px=1.0, amount=0.6 * amount)
    elif f.kind == "pacemaker":
        gx, gy = side * rng.uniform(0.45, 0.6), rng.uniform(-0.75, -0.62)
        win, box = canvas.disc(gx, gy, 0.08, 0.055, edge_px=1.0)
        canvas.density[win] += 0.9 * box
        hx, _, hax, _ = chest.heart
        pts = np.array([[gx, gy], [side * 0.3, -0.6], [mx + side * 0.08, -0.45], [mx, chest.hilum_y + 0.1],
                        [hx + 0.6 * hax, chest.dome[1] - 0.06]])
        canvas.stroke(pts + np.vstack([[0, 0], jitter[:4]]), width_px=max(1.0, 0.014 / px), amount=amount)
    else:  # chest tube: enters low laterally and curves up to the apex
        cx, cy, ax, ay = chest.lung_ellipse(side)
        pts = np.array([[side * (cx + ax + 0.15), chest.dome[side] + 0.05], [side * (cx + ax - 0.03), chest.dome[side] - 0.1],
                        [side * (cx + 0.5 * ax), cy - 0.5 * ay], [side * cx, chest.apex + 0.12]])
        canvas.stroke(pts + jitter[:4], width_px=max(1.0, 0.024 / px), amount=amount)


DRAW = {
    "Pleural Effusion": _effusion,
    "Pneumothorax": _pneumothorax,
    "Consolidation/Pneumonia": _consolidation,
    "Edema": _edema,
    "Nodule/Mass": _nodule,
    "Atelectasis": _atelectasis,
    "Support Devices": _device,
}
