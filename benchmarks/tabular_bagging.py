"""How much a single network on a small table depends on the rows it drew, and what averaging a few buys.

An experiment for the next step of issue 13 (bagging in the tabular recipe), on the suite's tables
(``benchmarks/tabular_suite.py`` writes them; run it once first). Each of K members is a plain
``layerwise.train`` of one family on the same random 80% of ``train.csv`` (standing for a run's
training + validation rows), with another seeded 80/20 train/validation split each (early stopping on
its own validation rows) and no test split of its own; every member predicts ``test.csv`` and the
ensemble averages their probabilities or values (bagging, Breiman 1996). Prints each member's score
and the ensemble's so far: accuracy x 100 or R² x 100 on test.csv.

    python benchmarks/tabular_bagging.py sacramento mlp 5
    python benchmarks/tabular_bagging.py concrete tabm 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from tabular_suite import TABLES, prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=list(TABLES))
    parser.add_argument("family", help="a tabular family: mlp, resmlp, ft_transformer, tabm")
    parser.add_argument("members", type=int, nargs="?", default=5)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/layerwise-tabular-suite"))
    args = parser.parse_args()

    import layerwise
    from sklearn.metrics import r2_score

    table = TABLES[args.table]
    train_csv, test_csv, _ = prepare(args.table, args.cache)
    test = pd.read_csv(test_csv)
    truth = test[table.target]
    predictions: list[np.ndarray] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "rows.csv"
        pd.read_csv(train_csv).sample(frac=0.8, random_state=123).to_csv(rows, index=False)
        for k in range(args.members):
            run = layerwise.train({"name": f"bag-{args.table}-{k}",
                                   "data": {"source": "csv", "path": str(rows), "target": table.target,
                                            "val_fraction": 0.2, "test_fraction": 0.0, "split_seed": k},
                                   "model": {"family": args.family}, "train": {"progress": False, "seed": k},
                                   "evaluate": {"baselines": False}}, runs_dir=Path(tmp) / "runs", quiet=True)
            out = run.predict(test)
            if table.task == "regression":
                predictions.append(out["value"].reshape(len(test), -1)[:, 0])
                single, bagged = (100 * r2_score(truth, p) for p in (predictions[-1], np.mean(predictions, 0)))
            else:
                names = np.array(run.data.spec.class_names)
                predictions.append(out["proba"])
                single, bagged = (100 * np.mean(names[p.argmax(1)] == truth.astype(str))
                                  for p in (predictions[-1], np.mean(predictions, 0)))
            print(f"{args.table} {args.family} member {k + 1}: {single:.1f}; the {k + 1} averaged: {bagged:.1f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
