"""Per-patient head anatomy and its tissue fractions on a sampling grid.

Frames: world millimetres with x towards the patient's left, y anterior, z superior, origin at the
centre of the field of view; the head frame is the world frame moved and turned by the patient's
position. Shapes are implicit (signed depths in mm, positive inside), so one code path fills a 2-D
slice or a 3-D volume, and edges are partial-volume blended over one voxel.

Physiological age drives atrophy continuously through `atrophy` (0 at 20 years, ~1 at 90, with a
little patient-to-patient spread): a wider subarachnoid gap, wider and deeper sulci, a wider
interhemispheric fissure, thinner cortex, larger ventricles and more white-matter lesions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AGE_RANGE = (20.0, 90.0)
TISSUES = ("scalp", "bone", "diploe", "csf", "gm", "wm", "deep_gm", "lesion")


@dataclass
class Head:
    age: float
    atrophy: float  # 0 young .. ~1 old; continuous in age
    semi: tuple[float, float, float]  # inner-table half-axes (left-right, antero-posterior, cranio-caudal), mm
    taper: float  # frontal narrowing of the skull
    skull: float  # skull thickness, mm
    scalp: float  # scalp thickness, mm
    rotation: np.ndarray  # 3x3, head frame -> world
    shift: np.ndarray  # head centre in world mm
    gyri: int  # sulci met once around the brain
    warp: np.ndarray  # (n, 5): amplitude, angular order, z frequency, depth frequency, phase of the sulcal wiggle
    sulcus_scale: np.ndarray  # (gyri, 2): per-sulcus depth and width factors
    ventricles: np.ndarray  # (n, 7): centre xyz, half-axes xyz, yaw (left ventricle; mirrored for the right)
    lesions: np.ndarray  # (n, 4): centre xyz, radius (punctate white-matter lesions)
    cap_scale: float  # individual susceptibility to periventricular lesions

    # Atrophy measures in mm, all monotone in `atrophy`.
    @property
    def gap(self) -> float:
        return 0.6 + 4.2 * self.atrophy ** 1.4

    @property
    def cortex(self) -> float:
        return 3.3 - 1.1 * self.atrophy

    @property
    def sulcus_width(self) -> float:
        return 0.4 + 3.2 * self.atrophy ** 1.2

    @property
    def sulcus_depth(self) -> float:
        return 11.0 + 7.0 * self.atrophy

    @property
    def fissure_width(self) -> float:
        return 1.0 + 4.0 * self.atrophy

    @property
    def cap(self) -> float:
        """Thickness of periventricular lesion caps (leukoaraiosis), mm; none before ~50 years."""
        return self.cap_scale * 6.0 * max(0.0, self.atrophy - 0.4) ** 1.2


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cz, sz, cx, sx, cy, sy = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rx @ ry


def sample_head(rng: np.random.Generator, age: float | None = None) -> Head:
    """One patient. `age` fixes the physiological age (for figures); otherwise uniform in AGE_RANGE."""
    age = float(rng.uniform(*AGE_RANGE)) if age is None else float(age)
    atrophy = max(0.0, (age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0]) + rng.normal(0, 0.05))
    size = rng.normal(1.0, 0.05)  # head size varies independently of age, so CSF must be read relative to it
    semi = (68 * size * rng.normal(1, 0.03), 86 * size * rng.normal(1, 0.03), 74 * size * rng.normal(1, 0.03))
    vent_grow = 1.0 + 1.5 * atrophy ** 1.3 * rng.normal(1, 0.12)  # ventricles widen ~2.5x from 20 to 90
    along = 1.0 + 0.15 * atrophy
    horns = np.array([
        # centre (x, y, z), half-axes (x, y, z), yaw (rad, + turns the anterior end outwards)
        [6.0, 17, 10, 3.0, 13, 9, 0.35],  # frontal horn
        [8.0, -4, 16, 3.3, 18, 6, 0.08],  # body
        [15, -26, 8, 4.2, 12, 9, -0.5],  # atrium and occipital horn
    ])
    horns[:, 3] *= vent_grow
    horns[:, 5] *= np.sqrt(vent_grow)
    horns[:, 4] *= along
    horns[:, 0] += 0.6 * (horns[:, 3] - horns[:, 3] / vent_grow)  # widening pushes the walls outwards
    horns[:, :3] *= size
    horns[:, 3:6] *= size * rng.normal(1, 0.06, (3, 1))
    count = rng.poisson(0.3 + 14 * max(0.0, atrophy - 0.35) ** 1.5)
    lesions = np.column_stack([
        rng.choice([-1, 1], count) * rng.uniform(12, 40, count) * size,
        rng.uniform(-45, 40, count) * size,
        rng.uniform(-5, 40, count) * size,
        rng.uniform(1.2, 3.5, count),
    ]) if count else np.zeros((0, 4))
    gyri = int(rng.integers(26, 36))
    orders = rng.integers(2, 9, 6)
    # Wiggle amplitudes keep the local sulcal frequency positive (no folded-back phase).
    amps = rng.dirichlet(np.ones(6)) * 0.7 * gyri / orders
    warp = np.column_stack([amps, orders, rng.uniform(0.02, 0.1, 6), rng.uniform(0.1, 0.35, 6),
                            rng.uniform(0, 2 * np.pi, 6)])
    sulcus_scale = np.column_stack([rng.uniform(0.45, 1.3, gyri), rng.uniform(0.6, 1.4, gyri)])
    return Head(
        age=age, atrophy=atrophy, semi=semi, taper=rng.uniform(0.0, 0.1),
        skull=rng.uniform(5, 8), scalp=rng.uniform(3, 6),
        rotation=_rotation(rng.normal(0, np.radians(6)), rng.normal(0, np.radians(4)), rng.normal(0, np.radians(2))),
        shift=np.array([rng.normal(0, 6), rng.normal(0, 6), rng.normal(0, 3)]),
        gyri=gyri, warp=warp, sulcus_scale=sulcus_scale, ventricles=horns, lesions=lesions,
        cap_scale=rng.uniform(0.5, 1.5),
    )


def _ellipsoid_depth(x, y, z, centre, semi, yaw: float = 0.0):
    """Approximate signed distance (mm, positive inside) to an ellipsoid turned by `yaw` about z:
    first order in the level set."""
    dx, dy = x - centre[0], y - centre[1]
    if yaw:
        dx, dy = np.cos(yaw) * dx - np.sin(yaw) * dy, np.sin(yaw) * dx + np.cos(yaw) * dy
    u, v, w = dx / semi[0], dy / semi[1], (z - centre[2]) / semi[2]
    rho = np.sqrt(u * u + v * v + w * w) + 1e-6
    grad = np.sqrt((u / semi[0]) ** 2 + (v / semi[1]) ** 2 + (w / semi[2]) ** 2) / rho + 1e-6
    return (1.0 - rho) / grad


def _union(*depths):
    return np.maximum.reduce(depths) if len(depths) > 1 else depths[0]


def tissue_fractions(head: Head, x: np.ndarray, y: np.ndarray, z: np.ndarray, voxel: float) -> dict[str, np.ndarray]:
    """Fraction of each tissue in TISSUES (air is the rest) at world points (x, y, z) in mm.

    `voxel` is the in-plane voxel size: edges blend over one voxel, as partial volume does.
    """
    def inside(depth):
        return np.clip(0.5 + depth / voxel, 0.0, 1.0)

    r = head.rotation
    px, py, pz = x - head.shift[0], y - head.shift[1], z - head.shift[2]
    hx = r[0, 0] * px + r[1, 0] * py + r[2, 0] * pz
    hy = r[0, 1] * px + r[1, 1] * py + r[2, 1] * pz
    hz = r[0, 2] * px + r[1, 2] * py + r[2, 2] * pz

    _, b, c = head.semi
    # Narrower forehead: scale x with y instead of using a second surface.
    sx = hx / (1.0 - head.taper * np.clip(hy / b, -1, 1))
    s = _ellipsoid_depth(sx, hy, hz, (0, 0, 0), head.semi)  # depth below the inner table
    f_head = inside(s + head.skull + head.scalp)
    f_outer = inside(s + head.skull)
    f_cranium = inside(s)
    diploe = inside(np.minimum(s + 0.75 * head.skull, -0.3 * head.skull - s)) * (f_outer - f_cranium)

    depth = s - head.gap  # depth below the brain surface
    f_brain = inside(depth)

    # Sulci: level lines of a wiggling angular phase, so they run radially in an axial slice and
    # bend with height. Distance to the nearest sulcus centre is the wrapped phase over its gradient.
    # Each sulcus has its own depth and width, looked up by its number around the brain.
    theta = np.arctan2(hy, sx)
    phase = head.gyri * theta
    for amp, order, zf, df, ph in head.warp:
        phase = phase + amp * np.sin(order * theta + zf * hz + df * depth + ph)
    radius = np.sqrt(sx * sx + hy * hy) + 1e-3
    to_sulcus = np.abs((phase + np.pi) % (2 * np.pi) - np.pi) / head.gyri * radius
    which = np.rint(phase / (2 * np.pi)).astype(np.int64) % head.gyri
    sulcus_depth = head.sulcus_depth * head.sulcus_scale[which, 0]
    half_sulcus = head.sulcus_width / 2 * head.sulcus_scale[which, 1]
    # The interhemispheric fissure: midline, in front of and behind the corpus callosum, full height above it.
    callosum = (np.abs(hy) < 0.42 * b) & (hz < 0.3 * c)
    to_fissure = np.where(callosum, 1e3, np.abs(hx))
    half_fissure, cortex = head.fissure_width / 2, head.cortex
    carved = _union(np.minimum(half_sulcus - to_sulcus, sulcus_depth - depth), half_fissure - to_fissure)
    grey_lined = _union(np.minimum(half_sulcus + cortex - to_sulcus, sulcus_depth + cortex - depth),
                        half_fissure + cortex - to_fissure)
    f_wm = inside(np.minimum(depth - cortex, -grey_lined))

    vents = []
    for cx, cy, cz, vx, vy, vz, yaw in head.ventricles:
        for side in (-1, 1):
            vents.append(_ellipsoid_depth(hx, hy, hz, (side * cx, cy, cz), (vx, vy, vz), side * yaw))
    third = _ellipsoid_depth(hx, hy, hz, (0, -4, -6), (1.0 + 2.5 * head.atrophy, 13, 8))
    ventricle = np.minimum(_union(*vents), np.abs(hx) - 0.8)  # the septum pellucidum stays
    ventricle = _union(ventricle, third)
    f_vent = inside(ventricle)

    nuclei = _union(
        *[_ellipsoid_depth(hx, hy, hz, (side * 11.5, 12, 3), (5.5, 9, 8)) for side in (-1, 1)],  # caudate heads
        *[_ellipsoid_depth(hx, hy, hz, (side * 10, -9, -3), (8, 12, 9)) for side in (-1, 1)],  # thalami
        *[_ellipsoid_depth(hx, hy, hz, (side * 23, 3, -2), (5, 14, 9)) for side in (-1, 1)],  # lentiform nuclei
    )
    f_deep = inside(nuclei)

    caps = ventricle + head.cap  # periventricular caps at the horns, where leukoaraiosis starts
    lesion = np.where(np.abs(hy - 2) > 12, caps, -1e3) if head.cap > 0 else np.full_like(hx, -1e3)
    for lx, ly, lz, lr in head.lesions:
        lesion = np.maximum(lesion, lr - np.sqrt((hx - lx) ** 2 + (hy - ly) ** 2 + (hz - lz) ** 2))
    f_lesion = inside(lesion)

    csf_in_brain = 1.0 - (1.0 - inside(carved)) * (1.0 - f_vent)
    parenchyma = f_brain * (1.0 - csf_in_brain)
    white = parenchyma * f_wm
    deep = white * f_deep
    lesions = (white - deep) * f_lesion
    return {
        "scalp": f_head - f_outer,
        "bone": f_outer - f_cranium - diploe,
        "diploe": diploe,
        "csf": f_cranium - parenchyma,
        "gm": parenchyma - white,
        "wm": white - deep - lesions,
        "deep_gm": deep,
        "lesion": lesions,
    }
