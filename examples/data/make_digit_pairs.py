"""Write examples/data/digit_pairs/: 400 of scikit-learn's bundled 8x8 digits (BSD-licensed, from
the UCI optical recognition of handwritten digits set) as PNGs, with a caption each.

The captions are GENERATED from the digit's label by templates (a wording and a number word or
numeral picked at random): they say which digit it is in varied words, nothing more about the
image. A real image-text set describes much more; this one exists to test and demonstrate
image-text contrastive learning (``task: clip``) with data we can ship.

    python examples/data/make_digit_pairs.py
"""

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a handwritten {w}", "the digit {n}", "a small picture of a {w}", "{w}, written by hand",
             "number {n}", "a scanned {w}", "the numeral {n} in pen", "a blurry {w}"]


def main(count: int = 400, seed: int = 0) -> None:
    out = Path(__file__).resolve().parent / "digit_pairs"
    (out / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    rows = [["image", "caption", "digit"]]
    for i in range(count):
        label = int(digits.target[i])
        pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)  # 0..16 grey levels -> 0..255
        name = f"images/{i:04d}.png"
        Image.fromarray(pixels, mode="L").save(out / name)
        caption = TEMPLATES[rng.integers(len(TEMPLATES))].format(w=WORDS[label], n=label)
        rows.append([name, caption, label])
    with open(out / "captions.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    print(f"{count} pairs in {out}")


if __name__ == "__main__":
    main()
