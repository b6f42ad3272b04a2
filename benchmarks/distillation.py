"""Knowledge distillation on MNIST: a teacher, a small MLP student trained alone, the same student distilled.

Hinton, Vinyals & Dean (2015), section 3: a 2x1200 teacher made 67 test errors, a 2x800 student
trained alone 146 and the same student distilled at T=20 only 74 (out of 10,000). This script prints
test errors out of 10,000 beside those anchors. Each model trains for a time budget (train.max_time).

    python benchmarks/distillation.py --quick          # < 60 s: 6,000 training images, short budgets
    python benchmarks/distillation.py                  # full: CNN teacher (examples/mnist.yaml), 2x800 student

From Python (benchmarks/compression.py): ``rows = main(["--quick"])``; each row has role, family,
parameters, accuracy, errors, samples, energy_kwh.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import layerwise

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
HINTON = {"teacher": 67, "student alone": 146, "distilled student": 74}  # errors / 10,000, 2x1200 vs 2x800


def _configs(args) -> tuple[dict[str, Any], dict[str, Any]]:
    """(teacher config, student config); the student has no data section: it takes the teacher's."""
    data: dict[str, Any] = {"source": "idx", "path": str(args.data), "val_fraction": 0.05}
    train = {"epochs": 1000, "batch_size": 128, "optimizer": "adamw", "lr": 1e-3, "scheduler": "none", "seed": 0,
             "progress": False}
    if args.quick:
        data["limit"] = 6000
        teacher_model = {"family": "mlp", "hidden": [256, 256], "dropout": 0.2}
    else:
        data["augment"] = {"shift": 0.1, "rotation": 10, "scale": 0.1}
        teacher_model = {"family": "cnn", "channels": [16, 32], "convs_per_block": 2, "global_pool": "flatten",
                         "head_hidden": 128, "dropout": 0.25}
    teacher = {"name": "distill-teacher", "data": data, "model": teacher_model,
               "train": dict(train, max_time=args.teacher_time), "evaluate": {"batch_size": 1000}}
    student = {"name": "distill-student", "model": {"family": "mlp", "hidden": args.student_hidden, "dropout": 0.1},
               "train": dict(train, max_time=args.student_time), "evaluate": {"batch_size": 1000}}
    return teacher, student


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; print and return one row per model (teacher, student alone, distilled student)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6,000 training images and budgets of 6 + 2x4 s")
    parser.add_argument("--data", default=str(MNIST), help="folder of MNIST IDX files")
    parser.add_argument("--teacher-time", type=float, help="teacher's training budget in seconds (default 150)")
    parser.add_argument("--student-time", type=float, help="each student's training budget in seconds (default 90)")
    parser.add_argument("--student-hidden", type=lambda s: [int(v) for v in s.split(",")],
                        help="student MLP widths, comma-separated (default 800,800; quick: 32)")
    parser.add_argument("--temperature", type=float, default=20.0, help="Hinton et al. used 20 on MNIST")
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--runs-dir", help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    args.teacher_time = args.teacher_time or (6.0 if args.quick else 150.0)
    args.student_time = args.student_time or (4.0 if args.quick else 90.0)
    args.student_hidden = args.student_hidden or ([32] if args.quick else [800, 800])
    teacher_cfg, student_cfg = _configs(args)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(args.runs_dir or tmp)
        teacher = layerwise.train(teacher_cfg, runs_dir=runs_dir, quiet=True)
        run = layerwise.distill(teacher, student_cfg, temperature=args.temperature, alpha=args.alpha,
                                runs_dir=runs_dir, quiet=True)
        rows = run.metrics["distillation"]["rows"]
        for row in rows:  # the energy each run recorded (the teacher's from its own metrics.json)
            energy = layerwise.load_run(row["run"]).metrics.get("energy") or {}
            row["energy_kwh"] = energy.get("energy_kwh")
            row["train_s"] = layerwise.load_run(row["run"]).metrics["training"]["duration_s"]
    wall = time.perf_counter() - started

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MNIST"
          f"{' (quick: 6,000 training images)' if args.quick else ''}; T={args.temperature:g}, alpha={args.alpha:g}; "
          f"budgets: teacher {args.teacher_time:g} s, students {args.student_time:g} s each")
    print(f"{'model':<18} {'family':<6} {'parameters':>11} {'accuracy':>9} {'errors':>14} {'train s':>8} "
          f"{'energy kWh':>11}   Hinton et al. 2015")
    for row in rows:
        errors = "-" if row["errors"] is None else f"{row['errors']} / {row['samples']:,}"
        energy = "-" if row["energy_kwh"] is None else f"{row['energy_kwh']:.2g}"
        print(f"{row['role']:<18} {row['family']:<6} {row['parameters']:>11,} {row['accuracy']:>9.4f} {errors:>14} "
              f"{row['train_s']:>8.1f} {energy:>11}   {HINTON[row['role']]} / 10,000")
    print(f"wall {wall:.0f} s (three trainings, evaluations and reports)")
    return rows


if __name__ == "__main__":
    main()
