"""Generate examples/data/play_lines.csv: spoken lines from three Shakespeare plays, labelled by play.

    python examples/data/make_play_lines.py [--source FOLDER_OF_PLAYS]

A real text-classification set: which play does a line come from, a comedy (Twelfth Night), a
tragedy (Romeo and Juliet) or a history (Richard III)? The plays are the Project Gutenberg
editions (public domain) in ``FOLDER/<play>_gut.txt``. Only spoken verse and prose after the
first ``ACT I`` heading are kept: no speaker names, stage directions, act or scene headings, and no
line shorter than 25 characters. 800 lines per play are drawn with a fixed seed and shuffled, so
the classes are balanced (majority-class rate 1/3).
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

PLAYS = {"twelfth_night": "twelfth_night_gut.txt", "romeo_and_juliet": "romeo_and_juliet_gut.txt",
         "richard_iii": "richard_iii_gut.txt"}
PER_PLAY = 800
MIN_CHARS = 25
SEED = 0


def spoken_lines(text: str) -> list[str]:
    """The play's spoken lines: after ``ACT I``, without names, directions and headings."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().upper().startswith("ACT I"))
    kept = []
    for line in lines[start:]:
        line = " ".join(line.split())  # verse indentation and stray spaces
        if len(line) < MIN_CHARS or line.startswith("[") or line.endswith("]"):
            continue
        if line.isupper() or line.startswith(("ACT ", "SCENE ", "Scene ")):  # speaker names, headings
            continue
        kept.append(line)
    return kept


def main() -> None:
    default = Path(__file__).resolve().parents[3] / "shared" / "data" / "shakespeare"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=default, help="folder with the plays' text files")
    args = parser.parse_args()
    rng = random.Random(SEED)
    rows = []
    for label, name in PLAYS.items():
        lines = spoken_lines((args.source / name).read_text(encoding="utf-8"))
        rows += [(line, label) for line in rng.sample(lines, PER_PLAY)]
    rng.shuffle(rows)
    out = Path(__file__).with_name("play_lines.csv")
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(f"wrote {out}: {len(rows)} lines from {len(PLAYS)} plays")


if __name__ == "__main__":
    main()
