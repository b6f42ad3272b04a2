"""Choosing the family on the validation split, when a tabular config names none.

No tabular family wins every table. On the suite (``benchmarks/tabular_suite.py``) TabM (Gorishniy
et al. 2024) leads where features interact and gradient boosting leads the linear model (hpc 84.5
against the MLP's 79.1, concrete 92.0 against 88.2), and the MLP with periodic embeddings (MLP-PLR,
Gorishniy et al. 2022) leads on the small, nearly linear tables (attrition 88.4 against 84.7,
penguins 98.6 against 97.1). The AutoML answer is model selection on held-out rows (Feurer et al.
2015, auto-sklearn; Erickson et al. 2020, AutoGluon-Tabular): fit every candidate with its recipe
and early stopping, keep the one with the lowest validation loss.

The validation loss, not accuracy, decides: it is a proper score that still separates candidates on
a validation split of 50 rows, where accuracies tie. Candidates are fitted cheapest first, each in
memory (no checkpoint until the choice: an interrupted selection keeps nothing, and says so); the
chosen one becomes the run, its weights, history and checkpoint written as if it had been the only
fit, so ``--resume`` extends it like any run. ``metrics.json`` → ``selection`` and the report's
"Family selection" section keep every candidate's validation curve and time.

A config that names a family (``model: {family: ...}``) is never second-guessed, and neither is a
run with ``recipe: fast``, no validation split, a distributed strategy, or more training rows than
:data:`~layerwise.runs.recipes.TABM_MAX_ROWS` under ``recipe: default`` (TabM's time; the MLP then).
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..core.config import ExperimentConfig
from ..core.sections import curves_html, html_table, register_section
from ..data.spec import DataSpec
from .recipes import TABM_MAX_ROWS

__all__ = ["CANDIDATES", "Candidate", "candidates", "choose"]

# the families tried under each recipe, cheapest first (the MLP takes a tenth of TabM's time)
CANDIDATES = {"default": ("mlp", "tabm"), "best": ("mlp", "tabm")}
MONITOR = "val_loss"


@dataclass
class Candidate:
    """One family fitted with its recipe: what the choice needs, and what the report shows."""

    family: str
    fitted: Any  # whatever the caller needs to make the winner the run (its config, model, trainer)
    history: list[dict[str, Any]]
    seconds: float
    parameters: int
    restored_epoch: int | None = None  # early stopping put this epoch's weights back; None: the last epoch's

    @property
    def best_epoch(self) -> int | None:
        """The epoch whose weights the candidate holds: what it is judged by is what it would predict with."""
        return self.restored_epoch or (self.history[-1]["epoch"] if self.history else None)

    @property
    def best(self) -> float:
        row = next((r for r in self.history if r.get("epoch") == self.best_epoch), {})
        return float(row[MONITOR]) if _finite(row.get(MONITOR)) else math.inf

    def record(self) -> dict[str, Any]:
        return {"family": self.family, MONITOR: self.best, "best_epoch": self.best_epoch,
                "epochs_run": len(self.history), "seconds": round(self.seconds, 3), "parameters": self.parameters,
                "curve": [row.get(MONITOR) for row in self.history]}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def candidates(config: ExperimentConfig, spec: DataSpec, rows: int) -> tuple[str, ...]:
    """The families to choose among for this config and table, or () for a single fit."""
    if (spec.kind != "tabular" or "family" in config.model.model_fields_set or config.recipe not in CANDIDATES
            or config.model.init_from or config.task not in (None, "classification", "regression")
            or config.data.val_fraction == 0
            or config.train.strategy != "local"):
        return ()
    if config.recipe == "default" and rows > TABM_MAX_ROWS:
        return ()
    return CANDIDATES[config.recipe]


def choose(families: tuple[str, ...], fit: Callable[[str], Candidate], say: Callable[[str], None]
           ) -> tuple[Candidate, dict[str, Any]]:
    """Fit each family (``fit``) and return the one with the lowest validation loss, with the
    ``selection`` record of metrics.json. Ties keep the earlier, cheaper family."""
    fitted: list[Candidate] = []
    for i, family in enumerate(families, 1):
        say(f"candidate {i}/{len(families)}: {family}")
        started = time.perf_counter()
        candidate = fit(family)
        candidate.seconds = time.perf_counter() - started
        fitted.append(candidate)
        say(f"candidate {family}: best {MONITOR} {candidate.best:.4g} (epoch {candidate.best_epoch}), "
            f"{candidate.seconds:.1f} s")
    winner = min(fitted, key=lambda c: c.best)  # min keeps the first of equal values
    if not math.isfinite(winner.best):
        winner = fitted[0]  # no candidate logged a finite validation loss: the cheapest stands
    others = ", ".join(f"{c.family} {c.best:.4g}" for c in fitted if c is not winner)
    say(f"chosen: {winner.family} ({MONITOR} {winner.best:.4g}; {others})")
    record = {"monitor": MONITOR, "chosen": winner.family, "candidates": [c.record() for c in fitted],
              "protocol": "each family fitted with its recipe on the training split, early stopping on the "
                          "validation split; the lowest validation loss of the weights each keeps wins"}
    return winner, record


@register_section("selection")
def selection_section(run) -> tuple[str, str] | None:
    """The report's "Family selection": every candidate's validation-loss curve, and the table."""
    selection = run.metrics.get("selection")
    if not selection:
        return None
    chosen = selection["chosen"]
    rows = [{"family": c["family"] + (" (chosen)" if c["family"] == chosen else ""),
             f"best {selection['monitor']}": c[selection["monitor"]], "best epoch": c["best_epoch"],
             "epochs run": c["epochs_run"], "seconds": c["seconds"], "parameters": c["parameters"]}
            for c in selection["candidates"]]
    curves = [{"label": c["family"] + (" (chosen)" if c["family"] == chosen else ""), "curve": c["curve"],
               "best_epoch": c["best_epoch"], "best": c[selection["monitor"]], "bold": c["family"] == chosen}
              for c in selection["candidates"]]
    figure = curves_html(curves, selection["monitor"], "validation loss of each candidate family by epoch "
                                                       "(dot: its best epoch)")
    parts = [figure] if figure else []
    parts.append(html_table(rows))
    parts.append(f"<p>{html.escape(selection['protocol'].capitalize())}. The metrics above are the chosen "
                 f"family's; name a family (<code>model: {{family: ...}}</code>) to fit that one alone.</p>")
    return "Family selection", "\n".join(parts)
