"""Imaging physics of the brain phantom: each modality's contrast, resolution and noise.

CT: Hounsfield units (air -1000, CSF ~8, white ~28, grey ~40, bone up to ~+1350), sharp, with
correlated quantum noise of a few HU; int16. MRI: T1-weighted (white bright, grey darker, CSF dark,
cortical bone dark, scalp fat and marrow bright) in scanner units, a smooth bias field and Rician
noise; uint16. PET: FDG-like SUV (grey matter hot, falling with age, frontal lobes first), blurred to
6-8 mm FWHM, Poisson counting noise and a reconstruction post-filter; float32.
"""

from __future__ import annotations

import numpy as np

from factory.data.hounsfield import CT_PNG_OFFSET
from factory.data.phantoms.brain_anatomy import Head

MODALITIES = ("ct", "mri", "pet")
FIELD_OF_VIEW = {"ct": 240.0, "mri": 220.0, "pet": 280.0}  # mm across the image; PET scanners see more
CT_RANGE = (-CT_PNG_OFFSET, 4095 - CT_PNG_OFFSET)  # 12-bit CT, as stored with RescaleIntercept -1024

_CT = {"scalp": 25, "bone": 1350, "diploe": 550, "csf": 8, "gm": 40, "wm": 28, "deep_gm": 37, "lesion": 17}
_T1 = {"scalp": 800, "bone": 40, "diploe": 550, "csf": 180, "gm": 560, "wm": 950, "deep_gm": 650, "lesion": 380}
_FDG = {"scalp": 0.9, "bone": 0.6, "diploe": 0.9, "csf": 0.4, "gm": 8.5, "wm": 2.6, "deep_gm": 9.0, "lesion": 1.8}


def blur(image: np.ndarray, sigmas: tuple[float, ...]) -> np.ndarray:
    """Separable Gaussian blur; `sigmas` in voxels per axis (0 leaves an axis alone). Edges replicate."""
    out = image.astype(np.float32, copy=False)
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0:
            continue
        radius = max(1, int(np.ceil(3 * sigma)))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps = (taps / taps.sum()).astype(np.float32)
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k, weight in enumerate(taps):
            acc += weight * np.take(padded, np.arange(k, k + n), axis=axis)
        out = acc
    return out


def _mix(fractions: dict[str, np.ndarray], values: dict[str, float], background: float) -> np.ndarray:
    total = sum(fractions.values())
    image = background * (1.0 - total)
    for tissue, fraction in fractions.items():
        image = image + values[tissue] * fraction
    return image.astype(np.float32)


def _sigmas(spacing: tuple[float, ...], mm: float) -> tuple[float, ...]:
    return tuple(mm / s for s in spacing)


def render_ct(fractions, spacing, rng: np.random.Generator) -> np.ndarray:
    values = {t: v + rng.normal(0, 1.5) for t, v in _CT.items()}
    values["bone"] *= rng.uniform(0.85, 1.1)
    values["diploe"] *= rng.uniform(0.8, 1.2)
    image = blur(_mix(fractions, values, -1000.0), _sigmas(spacing, 0.9))
    # Quantum noise in reconstructed CT is spatially correlated: blurred white noise, rescaled to its level.
    noise = blur(rng.standard_normal(image.shape).astype(np.float32), _sigmas(spacing, 1.2))
    image += noise * (rng.uniform(2.5, 4.5) / (noise.std() + 1e-6))
    return np.clip(np.rint(image), *CT_RANGE).astype(np.int16)


def render_mri(fractions, spacing, coords, rng: np.random.Generator) -> np.ndarray:
    gain = rng.uniform(0.85, 1.15)
    values = {t: v * gain * rng.normal(1, 0.03) for t, v in _T1.items()}
    image = blur(_mix(fractions, values, 0.0), _sigmas(spacing, 1.0))
    x, y, z = (c / 100.0 for c in coords)
    c = rng.normal(0, 1, 5)
    image *= np.exp(0.1 * (c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * (x * x + y * y - 0.5)))
    sigma = rng.uniform(15, 35)
    real = image + rng.normal(0, sigma, image.shape)
    imag = rng.normal(0, sigma, image.shape)
    return np.clip(np.rint(np.sqrt(real * real + imag * imag)), 0, 65535).astype(np.uint16)


def render_pet(head: Head, fractions, spacing, coords, rng: np.random.Generator) -> np.ndarray:
    scale = rng.uniform(0.8, 1.2)
    values = {t: v * scale for t, v in _FDG.items()}
    values["deep_gm"] *= 1.0 - 0.15 * head.atrophy
    fractions = dict(fractions)
    # Cortical FDG uptake falls with age, frontal cortex first. The value varies in space, so scale the
    # grey-matter fraction instead (the background is 0, so the missing fraction adds nothing).
    frontal = 1.0 / (1.0 + np.exp(-(coords[1] - head.shift[1]) / 15.0))
    fractions["gm"] = fractions["gm"] * ((1.0 - 0.25 * head.atrophy) * (1.0 - 0.15 * head.atrophy * frontal))
    activity = blur(_mix(fractions, values, 0.0), _sigmas(spacing, rng.uniform(5.0, 6.5) / 2.355))
    counts_per_suv = rng.uniform(5.0, 12.0)
    counts = rng.poisson(np.maximum(activity, 0) * counts_per_suv).astype(np.float32)
    return blur(counts / counts_per_suv, _sigmas(spacing, 2.0)).astype(np.float32)


def render(modality: str, head: Head, fractions, spacing, coords, rng: np.random.Generator) -> np.ndarray:
    if modality == "ct":
        return render_ct(fractions, spacing, rng)
    if modality == "mri":
        return render_mri(fractions, spacing, coords, rng)
    if modality == "pet":
        return render_pet(head, fractions, spacing, coords, rng)
    raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
