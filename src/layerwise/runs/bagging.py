"""Fitting a bag (``model.bags: K``): each member on its own folds of the rows.

The rows are cut into K folds (stratified by class for classification, seeded by
``data.split_seed``); member i is fitted, with the run's recipe, on the other K-1 folds, early
stopping on fold i, and seeded ``train.seed + i``. Every row is so seen by K-1 members and held
back by one, and the members differ by rows, initialisation and stopping epoch: what bagging
averages away (Breiman 1996; cross-fitting as in AutoGluon-Tabular, Erickson et al. 2020).

Which rows (:func:`rows_to_fold`): a member stops early on its own fold, so the run's validation
split has no more work once the family is chosen on it (``selection.py``). When the run is scored
on its test split (the default), the validation rows join the training rows the folds are cut
from, since a small table cannot spare them, and the baselines are fitted on those same rows; when
it is scored on the validation split (no test split), no member sees that split.

Why the recipe bags small tables: on the suite's smallest regression table (sacramento, 536
training rows) one network fell 2.2 R² points below ridge regression on test.csv; five members
cut from the training and validation rows land above both ridge and gradient boosting
(``benchmarks/tabular_suite.py``, docs/tabular.md).

After each member, ``checkpoints/last.pt`` holds the members fitted so far: an interrupted bag
resumes (``--resume``) at the member it was fitting, which starts over on its fold; the members
before it are not fitted again. The run's ``metrics.json`` → ``bagging`` keeps every member's
validation curve on its fold, and the report's "Bagging" section draws them.
"""

from __future__ import annotations

import html
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core.errors import RunError
from ..core.sections import curves_html, html_table, register_section
from ..data.spec import DataBundle, Split
from ..train.checkpoint import CHECKPOINT_FIX, save_checkpoint

__all__ = ["BagState", "folds", "rows_to_fold", "member_bundle", "fit_bag", "read_bag_checkpoint"]

MONITOR = "val_loss"


def folds(y: torch.Tensor, k: int, seed: int, stratify: bool) -> list[np.ndarray]:
    """The K held-out folds of the training rows (indices): stratified by class when ``stratify``."""
    from sklearn.model_selection import KFold, StratifiedKFold

    labels = y.numpy()
    if stratify:
        _, counts = np.unique(labels, return_counts=True)
        stratify = counts.min() >= k  # a class rarer than K folds cannot sit in each: plain folds then
    splitter = (StratifiedKFold if stratify else KFold)(k, shuffle=True, random_state=seed)
    return [held for _, held in splitter.split(np.zeros(len(labels)), labels if stratify else None)]


def rows_to_fold(bundle: DataBundle, scored_split: str) -> DataBundle:
    """The run's data as the bag sees it: training and validation rows together as ``train`` when the
    run is scored on its test split, the data as it is when it is scored on the validation split."""
    if scored_split != "test" or bundle.val is None or not len(bundle.val):
        return bundle
    rows = Split(torch.cat([bundle.train.x, bundle.val.x]), torch.cat([bundle.train.y, bundle.val.y]))
    return DataBundle(bundle.spec, rows, None, bundle.test, bundle.preprocessor)


def member_bundle(bundle: DataBundle, held_out: np.ndarray) -> DataBundle:
    """The data one member sees: the training rows but ``held_out`` to fit on, ``held_out`` to stop on."""
    keep = np.ones(len(bundle.train), dtype=bool)
    keep[held_out] = False
    train = Split(bundle.train.x[torch.from_numpy(keep)], bundle.train.y[torch.from_numpy(keep)])
    val = Split(bundle.train.x[torch.from_numpy(held_out)], bundle.train.y[torch.from_numpy(held_out)])
    return DataBundle(bundle.spec, train, val, None, bundle.preprocessor)


@dataclass
class BagState:
    """The members fitted so far (their weights and records): what ``checkpoints/last.pt`` holds."""

    bags: int
    weights: list[dict[str, torch.Tensor]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    selection: dict[str, Any] | None = None  # how the family was chosen before bagging, kept for metrics.json
    energy: dict[str, Any] | None = None

    def save(self, path: Path) -> None:
        save_checkpoint(path, {"bag": {"bags": self.bags, "weights": self.weights, "records": self.records,
                                       "selection": self.selection, "energy": self.energy}})


def read_bag_checkpoint(path: Path) -> BagState | None:
    """The bag a run's ``last.pt`` holds, or None when it is a single fit's checkpoint."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the trainer's loader says the same for a single fit's damaged file
        raise RunError(f"{path}: unreadable checkpoint ({type(exc).__name__}); {CHECKPOINT_FIX}") from exc
    if not isinstance(state, dict) or "bag" not in state:
        return None
    bag = state["bag"]
    return BagState(bag["bags"], list(bag["weights"]), list(bag["records"]), bag.get("selection"), bag.get("energy"))


def fit_bag(state: BagState, bundle: DataBundle, seed: int, stratify: bool,
            fit_member: Callable[[int, DataBundle], tuple[torch.nn.Module, Any]],
            checkpoint: Path | None, say: Callable[[str], None]) -> dict[str, Any]:
    """Fit the members ``state`` lacks on folds of ``bundle.train``, saving ``state`` to ``checkpoint``
    after each (None: kept in memory only); returns the ``bagging`` record of metrics.json. ``fit_member(i, data)`` returns the
    fitted model and its trainer."""
    held_out = folds(bundle.train.y, state.bags, seed, stratify)
    for i in range(len(state.weights), state.bags):
        data = member_bundle(bundle, held_out[i])
        say(f"member {i + 1}/{state.bags}: {len(data.train):,} rows to fit, {len(data.val):,} to stop on")
        started = time.perf_counter()
        model, trainer = fit_member(i, data)
        restored = trainer.restored_epoch or (trainer.history[-1]["epoch"] if trainer.history else None)
        row = next((r for r in trainer.history if r.get("epoch") == restored), {})
        record = {"member": i + 1, MONITOR: row.get(MONITOR), "best_epoch": restored,
                  "epochs_run": len(trainer.history), "steps": trainer.global_step,
                  "seconds": round(time.perf_counter() - started, 3),
                  "curve": [r.get(MONITOR) for r in trainer.history]}
        state.weights.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        state.records.append(record)
        if checkpoint is not None:
            state.save(checkpoint)
        say(f"member {i + 1}: best {MONITOR} {_shown(record[MONITOR])} on its fold (epoch {restored}), "
            f"{record['seconds']:.1f} s")
    return {"members": state.bags, "monitor": MONITOR, "records": state.records,
            "rows": len(bundle.train),
            "protocol": f"{state.bags}-fold cross-fitting of {len(bundle.train):,} rows: each member fitted on "
                        f"{state.bags - 1} folds with early stopping on the one left out; predictions averaged (the "
                        f"mean probability or value)"}


def _shown(value: Any) -> str:
    return f"{value:.4g}" if _finite(value) else "n/a"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@register_section("bagging")
def bagging_section(run) -> tuple[str, str] | None:
    """The report's "Bagging": each member's validation-loss curve on its own fold, and the table."""
    bagging = run.metrics.get("bagging")
    if not bagging:
        return None
    monitor = bagging["monitor"]
    rows = [{"member": r["member"], f"best {monitor} (its fold)": r[monitor], "best epoch": r["best_epoch"],
             "epochs run": r["epochs_run"], "seconds": r["seconds"]} for r in bagging["records"]]
    curves = [{"label": f"member {r['member']}", "curve": r["curve"], "best_epoch": r["best_epoch"],
               "best": r[monitor]} for r in bagging["records"]]
    figure = curves_html(curves, f"{monitor} on the member's own fold",
                         "validation loss of each member on the fold it held out (dot: the epoch it keeps)")
    parts = [figure] if figure else []
    parts.append(html_table(rows))
    parts.append(f"<p>{html.escape(bagging['protocol'][0].upper() + bagging['protocol'][1:])}. The metrics above "
                 f"are the averaged members' on the split no member saw; <code>model: {{bags: 1}}</code> fits one "
                 f"network instead.</p>")
    return "Bagging", "\n".join(parts)
