"""A contact sheet of brain phantoms: CT, MRI and PET rows at several physiological ages.

  python -m factory.data.phantoms.brain_sheet [--out docs/brain-phantoms.png] [--size 128] [--seed 0]

CT is shown in a brain window (level 40, width 100 HU); MRI and PET up to their 99.5th percentile.
Each column is one patient per modality (different people, as the data are unpaired) at the age above it.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

from factory.data.phantoms.brain import generate

AGES = (25, 40, 55, 70, 85)
ROWS = (("ct", "CT (W100 L40)"), ("mri", "MRI T1"), ("pet", "PET FDG"))


def display(image: np.ndarray, modality: str) -> np.ndarray:
    if modality == "ct":
        low, high = -10.0, 90.0
    else:
        low, high = 0.0, float(np.percentile(image, 99.5))
    return (np.clip((image.astype(np.float32) - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def contact_sheet(path: str, size: int = 128, seed: int = 0, scale: int = 2) -> None:
    tile, margin, top = size * scale, 110, 24
    sheet = Image.new("L", (margin + tile * len(AGES), top + tile * len(ROWS)), 0)
    draw = ImageDraw.Draw(sheet)
    for col, age in enumerate(AGES):
        draw.text((margin + col * tile + tile // 2 - 20, 6), f"age {age}", fill=255)
        for row, (modality, name) in enumerate(ROWS):
            image = display(generate(seed, col, modality, size=size, age=age).image, modality)
            tile_image = Image.fromarray(image).resize((tile, tile), Image.BILINEAR)
            sheet.paste(tile_image, (margin + col * tile, top + row * tile))
            if col == 0:
                draw.text((6, top + row * tile + tile // 2), name, fill=255)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/brain-phantoms.png")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    contact_sheet(args.out, args.size, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
