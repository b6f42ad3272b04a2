"""Generate examples/data/shapes/: 32x32 PNGs of circles, squares and triangles (seeded).

    python examples/data/make_shapes.py

One sub-folder per class, the layout the ``image_folder`` source reads. Each image has a random
background, and a shape of random colour, size and position.
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 32
PER_CLASS = 40
SEED = 0
CLASSES = ("circle", "square", "triangle")


def _colour(rng: random.Random, lo: int, hi: int) -> tuple[int, int, int]:
    return tuple(rng.randint(lo, hi) for _ in range(3))


def draw(shape: str, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), _colour(rng, 0, 90))  # dark background
    pen = ImageDraw.Draw(img)
    radius = rng.uniform(6, 12)
    cx, cy = rng.uniform(radius + 1, SIZE - radius - 1), rng.uniform(radius + 1, SIZE - radius - 1)
    fill = _colour(rng, 130, 255)  # bright shape, so it stands out at any colour
    if shape == "circle":
        pen.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "square":
        half = radius * 0.85
        pen.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    else:
        turn = rng.uniform(0, 2 * math.pi)
        corners = [(cx + radius * math.cos(turn + k * 2 * math.pi / 3), cy + radius * math.sin(turn + k * 2 * math.pi / 3))
                   for k in range(3)]
        pen.polygon(corners, fill=fill)
    return img


def main(root: Path, per_class: int = PER_CLASS, seed: int = SEED) -> None:
    rng = random.Random(seed)
    if root.exists():
        shutil.rmtree(root)
    for shape in CLASSES:
        folder = root / shape
        folder.mkdir(parents=True)
        for i in range(per_class):
            draw(shape, rng).save(folder / f"{shape}_{i:03d}.png", optimize=True)
    print(f"wrote {len(CLASSES) * per_class} images under {root}")


if __name__ == "__main__":
    main(Path(__file__).with_name("shapes"))
