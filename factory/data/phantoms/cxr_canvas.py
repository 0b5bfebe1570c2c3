"""Drawing primitives for the chest X-ray phantom: coordinate grids, texture banks, soft masks, strokes.

The film is drawn as a density map (high = attenuating = bright on the film) over normalised
coordinates in [-1, 1]. Two frames exist: the image frame (X, Y) and the patient frame (x, y), which is
the image frame shifted and rotated by the patient's positioning. Grids and textures depend only on
the image size, so they are computed once per size and shared by every study.
"""

from __future__ import annotations

import functools
import math

import numpy as np

# A fixed seed: the texture bank is part of the simulator, identical in every process and run.
_TEXTURE_SEED = 20240611
_TEXTURES = 6


@functools.lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (X across, Y down), float32, shape (size, size)."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


def _bandpass(rng: np.random.Generator, side: int, period_px: float, width: float) -> np.ndarray:
    """White noise filtered to a ring of spatial frequencies around 1/period_px, unit variance."""
    noise = rng.standard_normal((side, side))
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f0 = 1.0 / period_px
    spectrum = np.fft.rfft2(noise) * np.exp(-0.5 * ((f - f0) / (width * f0)) ** 2)
    out = np.fft.irfft2(spectrum, s=(side, side))
    return (out / out.std()).astype(np.float32)


@functools.lru_cache(maxsize=4)
def texture_bank(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two banks of textures 1.5x the image side, cropped at random offsets per study.

    vessels: the zero-crossings of band-pass noise form a network of thin curved lines, which reads
    as pulmonary vascular markings. blotch: smooth low-frequency noise in [-1, 1] that makes airspace
    opacities patchy instead of uniform.
    """
    rng = np.random.default_rng(_TEXTURE_SEED)
    side = size * 3 // 2
    vessels = np.empty((_TEXTURES, side, side), np.float32)
    blotch = np.empty((_TEXTURES, side, side), np.float32)
    for k in range(_TEXTURES):
        band = _bandpass(rng, side, period_px=0.075 * size, width=0.45)
        vessels[k] = np.exp(-((band / 0.22) ** 2))
        blotch[k] = np.tanh(_bandpass(rng, side, period_px=0.25 * size, width=0.6))
    return vessels, blotch


def crop(bank: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    k = int(rng.integers(bank.shape[0]))
    oy, ox = rng.integers(0, bank.shape[1] - size + 1, 2)
    return bank[k, oy:oy + size, ox:ox + size]


def ramp(a: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] in place: turns a signed, scaled distance into a soft-edged mask."""
    return np.clip(a, 0.0, 1.0, out=a)


class Canvas:
    """One film being drawn: the density map, both coordinate frames and the pixel scale."""

    def __init__(self, size: int, angle: float, shift: tuple[float, float]):
        self.size = size
        self.px = 2.0 / size  # one pixel in normalised units
        self.X, self.Y = grid(size)
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.dx, self.dy = shift
        xs, ys = self.X - np.float32(self.dx), self.Y - np.float32(self.dy)
        self.x = (self.cos * xs + self.sin * ys).astype(np.float32)
        self.y = (self.cos * ys - self.sin * xs).astype(np.float32)
        self.density = np.zeros((size, size), np.float32)

    def to_image(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Patient-frame points to image-frame points (the inverse of the frame change above)."""
        return self.cos * x - self.sin * y + self.dx, self.sin * x + self.cos * y + self.dy

    def window(self, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
        """Rows and columns covering a patient-frame disc, so local shapes cost only their area."""
        ix, iy = self.to_image(np.float32(cx), np.float32(cy))
        half = radius + 2 * self.px
        c0 = max(0, int((ix - half + 1) / self.px))
        c1 = min(self.size, int((ix + half + 1) / self.px) + 1)
        r0 = max(0, int((iy - half + 1) / self.px))
        r1 = min(self.size, int((iy + half + 1) / self.px) + 1)
        return slice(r0, r1), slice(c0, c1)

    def disc(self, cx: float, cy: float, rx: float, ry: float, edge_px: float = 1.5) -> tuple[tuple[slice, slice], np.ndarray]:
        """A soft-edged ellipse in its window: (window, mask in [0, 1])."""
        win = self.window(cx, cy, max(rx, ry))
        u = (self.x[win] - cx) / rx
        v = (self.y[win] - cy) / ry
        r = np.sqrt(u * u + v * v)
        return win, ramp((1.0 - r) * (min(rx, ry) / (edge_px * self.px)))

    def stroke(self, points: np.ndarray, width_px: float, amount: float, out: np.ndarray | None = None) -> None:
        """Add a smooth curve through patient-frame control points (k, 2) to the density map.

        The curve is sampled every 0.35 px and splatted bilinearly (one bincount), with parallel
        copies across its width; the coverage is clipped to 1 so overlapping samples do not glow.
        """
        target = self.density if out is None else out
        pts = _catmull_rom(np.asarray(points, np.float64), self.px * 0.35)
        ix, iy = self.to_image(pts[:, 0], pts[:, 1])
        col = (ix + 1.0) / self.px - 0.5
        row = (iy + 1.0) / self.px - 0.5
        tangent = np.gradient(np.stack([col, row], 1), axis=0)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
        offsets = np.arange(-(width_px - 1) / 2, (width_px - 1) / 2 + 1e-6, 0.5) if width_px > 1 else np.zeros(1)
        col = (col[None, :] - offsets[:, None] * tangent[None, :, 1]).ravel()
        row = (row[None, :] + offsets[:, None] * tangent[None, :, 0]).ravel()
        c0, r0 = np.floor(col), np.floor(row)
        fc, fr = col - c0, row - r0
        n = self.size
        weight = 0.35 * (0.5 if width_px > 1 else 1.0)
        idx_parts, w_parts = [], []
        for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
            rr, cc = r0 + dr, c0 + dc
            ok = (rr >= 0) & (rr < n) & (cc >= 0) & (cc < n)
            idx_parts.append((rr[ok] * n + cc[ok]).astype(np.int64))
            w_parts.append(w[ok] * weight)
        cover = np.bincount(np.concatenate(idx_parts), np.concatenate(w_parts), minlength=n * n)
        target += (np.minimum(cover, 1.0) * amount).astype(np.float32).reshape(n, n)


def _catmull_rom(points: np.ndarray, step: float) -> np.ndarray:
    """A Catmull-Rom spline through the control points, sampled about every `step` units."""
    if len(points) == 2:
        length = float(np.linalg.norm(points[1] - points[0]))
        t = np.linspace(0.0, 1.0, max(2, int(length / step) + 1))[:, None]
        return points[0] * (1 - t) + points[1] * t
    padded = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    pieces = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1], padded[i], padded[i + 1], padded[i + 2]
        length = float(np.linalg.norm(p2 - p1))
        t = np.linspace(0.0, 1.0, max(2, int(length / step) + 1), endpoint=i == len(padded) - 3)[:, None]
        t2, t3 = t * t, t * t * t
        pieces.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                             + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
    return np.vstack(pieces)
