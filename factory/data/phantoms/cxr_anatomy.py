"""Per-patient anatomy of a frontal (PA) chest radiograph.

Conventions: patient frame x in [-1, 1] across, y in [-1, 1] down; the patient's right is on the
image left (x < 0), as on a real PA film, so `side` is -1 for right and +1 for left.
Distances are in normalised units (the image is 2 wide).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from factory.data.phantoms.cxr_canvas import Canvas, crop, ramp, texture_bank

SIDES = {"right": -1, "left": 1}
LUNG_AIR = 0.42  # density a lung loses to air; an opacity adding this much looks like soft tissue


@dataclass
class Chest:
    """Geometry drawn from the patient's random draw, adjusted by findings before rendering."""

    body_w: float  # body half-width at the chest
    lung_cx: float  # distance of each lung's centre from the midline
    lung_ax: float  # lung half-width
    apex: float  # y of the lung apices
    dome: dict[int, float]  # y of each hemidiaphragm's top, by side
    dome_h: float  # how far the domes fall towards the costophrenic angles
    med_x: float  # mediastinal centre (tracheal shift)
    med_w: float  # upper mediastinum half-width
    ctr: float  # cardiothoracic ratio
    heart_h: float  # heart half-height
    hilum_y: float
    carina_y: float
    rib_period: float
    rib_phase: float
    rib_curve: float
    rib_amount: float
    clavicle_y: float
    marking_amount: float
    gain: float  # exposure: film response to density
    window: tuple[float, float]  # film display window (low, high) after the response
    noise: float
    perihilar: float  # normal perihilar vascular density; edema adds to it, so mild edema is a judgement call

    @property
    def thorax_half(self) -> float:
        return self.lung_cx + self.lung_ax

    @property
    def heart(self) -> tuple[float, float, float, float]:
        """(centre x, centre y, half-width, half-height); two thirds of the heart lie left of midline."""
        width = self.ctr * 2 * self.thorax_half
        right, left = 0.36 * width, 0.64 * width
        return self.med_x + (left - right) / 2, self.dome[1] - 0.35 * self.heart_h, width / 2, self.heart_h

    def lung_ellipse(self, side: int) -> tuple[float, float, float, float]:
        bottom = max(self.dome.values()) + 0.6
        return side * self.lung_cx + 0.3 * self.med_x, (bottom + self.apex) / 2, self.lung_ax, (bottom - self.apex) / 2

    def dome_y(self, side: int, x: np.ndarray) -> np.ndarray:
        cx = side * self.lung_cx
        return self.dome[side] + self.dome_h * ((x - cx) / self.lung_ax) ** 2

    def costophrenic_y(self, side: int) -> float:
        return float(self.dome[side] + self.dome_h * 0.9 ** 2)


def sample_chest(rng: np.random.Generator) -> Chest:
    inspiration = rng.uniform(0.0, 1.0)  # deeper breath: lower, flatter domes and longer lungs
    right_dome = 0.52 - 0.2 * inspiration + rng.normal(0, 0.02)
    return Chest(
        body_w=rng.uniform(0.86, 1.08),
        lung_cx=rng.uniform(0.36, 0.42),
        lung_ax=rng.uniform(0.27, 0.32),
        apex=rng.uniform(-0.8, -0.7),
        dome={-1: right_dome, 1: right_dome + rng.uniform(0.02, 0.07)},
        dome_h=rng.uniform(0.12, 0.2) * (1.1 - 0.3 * inspiration),
        med_x=rng.normal(0, 0.015),
        med_w=rng.uniform(0.085, 0.12),
        ctr=rng.uniform(0.38, 0.5),
        heart_h=rng.uniform(0.27, 0.33),
        hilum_y=rng.uniform(-0.15, -0.03),
        carina_y=rng.uniform(-0.38, -0.3),
        rib_period=rng.uniform(0.12, 0.145),
        rib_phase=rng.uniform(0, 2 * np.pi),
        rib_curve=rng.uniform(0.9, 1.3),
        rib_amount=rng.uniform(0.05, 0.09),
        clavicle_y=rng.uniform(-0.74, -0.64),
        marking_amount=rng.uniform(0.04, 0.09),
        gain=rng.uniform(2.2, 3.0),
        window=(rng.uniform(0.12, 0.2), rng.uniform(0.88, 0.96)),
        noise=rng.uniform(0.008, 0.03),
        perihilar=rng.uniform(0.0, 0.08),
    )


@dataclass
class Masks:
    """Soft masks in [0, 1] over the whole film, shared by the findings."""

    lung: dict[int, np.ndarray]  # aerated lung per side, mediastinum and heart removed
    markings: np.ndarray  # vascular markings, added to the density at the end (findings edit it)
    blotch: np.ndarray  # low-frequency texture for patchy opacities
    vessels_alt: np.ndarray  # a second vessel-like texture (air bronchograms, interstitium)


def draw_anatomy(canvas: Canvas, chest: Chest, rng: np.random.Generator) -> Masks:
    """Soft tissue, lungs, mediastinum, heart, bones; returns the masks the findings draw into."""
    x, y, px, d = canvas.x, canvas.y, canvas.px, canvas.density
    soft = 1.5 * px
    vessels, blotch = texture_bank(canvas.size)

    # Body outline: full width over the chest, narrowing through the shoulders to the neck.
    narrowing = ramp((-0.6 - y) / 0.4)
    body = ramp((chest.body_w - (chest.body_w - 0.3) * narrowing - np.abs(x)) / 0.12)
    d += 0.55 * body

    hx, hy, hax, hay = chest.heart
    heart = ramp((1.0 - ((x - hx) / hax) ** 2 - ((y - hy) / hay) ** 2) * (hax / (2 * soft)))
    mediastinum = ramp((chest.med_w - np.abs(x - chest.med_x)) / soft)
    np.maximum(mediastinum, heart, out=mediastinum)
    lungs = {}
    for side in (-1, 1):
        cx, cy, ax, ay = chest.lung_ellipse(side)
        ellipse = ramp((1.0 - ((x - cx) / ax) ** 2 - ((y - cy) / ay) ** 2) * (ax / (2 * soft)))
        above_dome = ramp((chest.dome_y(side, x) - y) / soft)
        lungs[side] = ellipse * above_dome * (1.0 - mediastinum)
    lung = lungs[-1] + lungs[1]
    d -= LUNG_AIR * lung
    d += (LUNG_AIR * chest.perihilar) * perihilar_haze(canvas, chest, lung)
    # Overlying soft tissue (breasts, pectorals, domes) greys the lower and peripheral lung.
    d += 0.1 * lung * ramp((y - chest.hilum_y) / 0.7)
    d += 0.08 * ramp((chest.dome_y(-1, x) - y) * -1 / (4 * soft)) * body  # liver below the right dome

    # Vascular markings: denser and thicker towards the hila, fading to the periphery.
    hilar = ramp(1.0 - (np.abs(x - chest.med_x) - chest.med_w) / 0.55)
    markings = crop(vessels, rng, canvas.size) * lung * (chest.marking_amount * (0.35 + 0.65 * hilar))
    for side in (-1, 1):
        win, hil = canvas.disc(chest.med_x + side * (chest.med_w + 0.03), chest.hilum_y, 0.06, 0.09, edge_px=4)
        d[win] += 0.07 * hil

    # Spine (vertebral bodies repeat every ~0.11) and trachea, both on the mediastinal midline.
    spine_x = np.abs(x - 0.5 * chest.med_x)
    vertebrae = 0.8 + 0.2 * np.cos(y * (2 * np.pi / 0.11))
    d += 0.14 * ramp((0.075 - spine_x) / soft) * vertebrae * ramp((y + 1.0) / 0.2)
    trachea = ramp((0.032 - np.abs(x - chest.med_x)) / soft) * ramp((chest.carina_y - y) / (3 * soft))
    d -= 0.12 * trachea

    # Ribs: arcs falling laterally, as bands where a cosine of the arc coordinate peaks.
    cage = ramp((1.0 - (x / (chest.thorax_half + 0.05)) ** 2 - ((y - 0.0) / 0.95) ** 2) * 8)
    cage *= ramp((0.85 - y) / 0.1)
    # Posterior ribs rise from the spine and turn down at the lateral wall; anterior ribs (fainter)
    # fall towards the midline.
    ax_ = np.abs(x)
    posterior = y + chest.rib_curve * (0.7 * ax_ - 0.8 * x * x)
    ribs = ramp((np.cos(posterior * (2 * np.pi / chest.rib_period) + chest.rib_phase) - 0.45) * 2.5)
    anterior = y - 0.45 * ax_
    ribs += 0.5 * ramp((np.cos(anterior * (2 * np.pi / (1.2 * chest.rib_period))) - 0.6) * 3) * ramp((ax_ - 0.1) / 0.3)
    d += chest.rib_amount * ribs * cage * ramp((ax_ - 0.06) / 0.08)

    # Clavicles: bright bands from the sternal notch out and slightly up to the shoulders.
    for side in (-1, 1):
        pts = np.array([[side * 0.08, chest.clavicle_y + 0.06], [side * 0.3, chest.clavicle_y],
                        [side * 0.55, chest.clavicle_y - 0.06], [side * 0.78, chest.clavicle_y - 0.04]])
        canvas.stroke(pts, width_px=max(1.0, 0.045 / px), amount=0.14)

    # Gastric air bubble under the left dome.
    win, bubble = canvas.disc(chest.med_x + 0.3, chest.dome[1] + 0.13, 0.1, 0.06, edge_px=3)
    d[win] -= 0.15 * bubble * body[win]
    return Masks(lung=lungs, markings=markings, blotch=crop(blotch, rng, canvas.size),
                 vessels_alt=crop(vessels, rng, canvas.size))


def perihilar_haze(canvas: Canvas, chest: Chest, lung: np.ndarray) -> np.ndarray:
    """Weight in [0, 1] over the lungs, highest beside the hila and fading to the periphery."""
    r = np.sqrt(((np.abs(canvas.x - chest.med_x) - chest.med_w) / 0.5) ** 2 + ((canvas.y - chest.hilum_y) / 0.55) ** 2)
    return ramp(1.2 - r) * lung


def expose(canvas: Canvas, chest: Chest, rng: np.random.Generator) -> np.ndarray:
    """Density to an 8-bit film: exponential response, display window, quantum noise."""
    film = 1.0 - np.exp(-chest.gain * np.maximum(canvas.density, 0.0))
    low, high = chest.window
    film = (film - low) * (1.0 / (high - low))
    film += rng.standard_normal(film.shape, dtype=np.float32) * np.float32(chest.noise)
    return (np.clip(film, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
