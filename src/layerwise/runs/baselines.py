"""Baselines in every tabular run: did the network earn its keep?

On tables, gradient-boosted trees are hard to beat and a linear model is often close (Grinsztajn,
Oyallon & Varoquaux 2022, "Why do tree-based models still outperform deep learning on typical
tabular data?"; Shwartz-Ziv & Armon 2022, "Tabular data: deep learning is not all you need"). A
network's accuracy means little until it stands next to theirs, so every tabular classification or
regression run also fits two scikit-learn models and reports them beside the network
(``metrics.json`` → ``baselines``, the report's "Baselines" section, one line after ``layerwise
train``). ``evaluate.baselines: false`` turns them off.

The protocol, chosen so that the comparison is fair to both sides:

- **Same rows, same encoding.** The baselines are fitted on the run's own training split as the run
  preprocessed it (``bundle.train``: imputed, standardized, one-hot columns as they are), never on
  the validation or scored split. Embedding-index columns (``spec.categorical``: one integer code
  per row) become one-hot columns for the linear model, which cannot read a code as a quantity, and
  native categorical features for HistGradientBoosting (``categorical_features``), which splits on
  sets of categories (codes past its 255 bins stay numeric).
- **Defaults, not tuned.** ``LogisticRegression`` (multinomial, C=1) or ``Ridge`` (alpha=1, every
  target at once), and ``HistGradientBoostingClassifier`` / ``Regressor`` (several targets: one each,
  ``MultiOutputRegressor``), seeded with ``train.seed``. A baseline is a floor to clear, not a rival
  tuned as hard as the network.
- **Scored by the network's own evaluator.** Their class probabilities (as log-probabilities, the
  logits of a softmax) or predictions (in the scaled target units the network predicts in) go through
  ``task.evaluator`` and ``task.loss`` on the split the network is scored on, so every metric
  (accuracy, ROC-AUC with its bins, R² on the original scale, the loss...) is computed identically.

Nothing fitted here is saved (a run holds no pickled model), so ``layerwise evaluate RUN --data``
does not score the baselines again. A baseline that fails records ``{"error": "one line"}``; the run
goes on.
"""

from __future__ import annotations

import html
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch

from ..core.sections import figure_html, html_table, pyplot, register_section

__all__ = ["fit_baselines", "baseline_line", "verdict", "BASELINE_NAMES"]

# metrics.json key -> the name shown to people
BASELINE_NAMES = {"logistic_regression": "logistic regression", "ridge": "ridge regression",
                  "hist_gradient_boosting": "HistGradientBoosting"}
TASKS_WITH_BASELINES = ("classification", "regression")
MAX_CATEGORIES = 255  # HistGradientBoosting's max_bins: a categorical feature must have fewer codes


def fit_baselines(run, bundle, split: str, learnt: str = "training split") -> dict[str, Any] | None:
    """Fit the baselines on ``bundle.train`` and score them on ``split`` like the run's network;
    ``learnt`` names those rows for the protocol (a bag's are the training and validation splits).

    Returns the ``baselines`` entry of ``metrics.json``, or None when the run has none (baselines
    off, not tabular, not classification or regression).
    """
    config, task = run.config, run.task
    if not config.evaluate.baselines or task.spec.kind != "tabular" or config.task not in TASKS_WITH_BASELINES:
        return None
    # what the network saw: the stored split through the evaluation-time batch transform
    transform = bundle.preprocessor.inputs.batch
    train, scored = bundle.train, bundle.split(split)
    x_train, x_scored = transform(train.x).numpy(), transform(scored.x).numpy()  # (N, F), (M, F)
    seed, targets = config.train.seed, task.spec.num_targets or 1
    if task.spec.target == "class":
        linear = ("logistic_regression", _logistic, _one_hot_codes)
        boosted = ("hist_gradient_boosting", lambda cats: _boosting_classifier(cats, seed), _native_codes)
    else:
        linear = ("ridge", _ridge, _one_hot_codes)
        boosted = ("hist_gradient_boosting", lambda cats: _boosting_regressor(cats, seed, targets), _native_codes)
    out: dict[str, Any] = {"protocol": f"fitted on the run's {learnt} ({_rows(len(train))}, the run's "
                                       f"preprocessing), scored on the {split} split ({_rows(len(scored))})"}
    for name, make, encode in (linear, boosted):
        out[name] = _fit_and_score(task, config.evaluate, make, encode, x_train, train.y, x_scored, scored.y)
    return out


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _fit_and_score(task, eval_cfg, make: Callable, encode: Callable, x_train: np.ndarray, y_train: torch.Tensor,
                   x_scored: np.ndarray, y_scored: torch.Tensor) -> dict[str, Any]:
    """One baseline: encode, fit, predict, score. Any failure is its one-line ``error``, not the run's."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    # one OpenMP thread: in a process where torch has started its own OpenMP runtime, the two pools
    # fight over the cores and HistGradientBoosting's fit takes ~100x longer (50 s instead of 0.3 s
    # on 1,000 rows, measured on 2 cores); a baseline is small next to the network anyway
    try:
        slots = task.spec.categorical
        features, categorical = encode(x_train, slots)
        model = make(categorical)
        target = y_train.numpy()
        if task.spec.target == "class" and len(np.unique(target)) < 2:  # sklearn's own messages differ by model
            raise ValueError("the training split holds a single class; a classifier needs at least two")
        if task.spec.target == "numeric" and target.ndim == 2 and target.shape[1] == 1:
            target = target[:, 0]  # (N, 1) -> (N,): one target, fitted as such
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            started = time.perf_counter()
            with threadpool_limits(limits=1, user_api="openmp"):
                model.fit(features, target)
            fit_s = time.perf_counter() - started
        with threadpool_limits(limits=1, user_api="openmp"):
            outputs = _outputs(task, model, encode(x_scored, slots)[0])
        entry: dict[str, Any] = {"metrics": _score(task, eval_cfg, outputs, x_scored, y_scored), "fit_s": fit_s}
        converged = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
        if converged:
            entry["warning"] = str(converged[0].message).splitlines()[0]
        return entry
    except Exception as exc:  # a baseline is a comparison, never a reason for the run to fail
        text = str(exc).strip()
        return {"error": f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__}


# -- the models ------------------------------------------------------------------------------------

def _logistic(categorical):
    from sklearn.linear_model import LogisticRegression

    # lbfgs fits the multinomial model for more than two classes; 1000 iterations converge on
    # standardized tables, and a warning says when they do not
    return LogisticRegression(C=1.0, max_iter=1000)


def _ridge(categorical):
    from sklearn.linear_model import Ridge

    return Ridge(alpha=1.0)  # several targets at once: one weight vector each


def _boosting_classifier(categorical, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(categorical_features=categorical, random_state=seed)


def _boosting_regressor(categorical, seed: int, targets: int):
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.multioutput import MultiOutputRegressor

    model = HistGradientBoostingRegressor(categorical_features=categorical, random_state=seed)
    return MultiOutputRegressor(model) if targets > 1 else model  # one model per target: it predicts one


# -- encodings of the embedding-index columns --------------------------------------------------------

def _one_hot_codes(x: np.ndarray, slots: list[tuple[int, int]]):
    """For the linear model: each code column (position, cardinality) replaced by its one-hot columns,
    sparse (N, F - len(slots) + sum of cardinalities) so that a column of many levels stays cheap."""
    if not slots:
        return x, None
    from scipy import sparse

    positions = {position for position, _ in slots}
    dense = x[:, [j for j in range(x.shape[1]) if j not in positions]]
    blocks = [sparse.csr_matrix(dense)]
    rows = np.arange(len(x))
    for position, cardinality in slots:
        codes = np.clip(x[:, position].astype(np.int64), 0, cardinality - 1)
        blocks.append(sparse.csr_matrix((np.ones(len(x), dtype=np.float32), (rows, codes)),
                                        shape=(len(x), cardinality)))
    return sparse.hstack(blocks, format="csr"), None


def _native_codes(x: np.ndarray, slots: list[tuple[int, int]]):
    """For the trees: the codes stay as they are, marked categorical (a boolean mask over the F
    columns) where the trees can hold their levels; one-hot columns are 0/1 numbers they split on."""
    mask = np.zeros(x.shape[1], dtype=bool)
    for position, cardinality in slots:
        mask[position] = cardinality <= MAX_CATEGORIES
    return x, (mask if mask.any() else None)


# -- scoring like the network ----------------------------------------------------------------------

def _outputs(task, model, features) -> np.ndarray:
    """What the network would output: (M, classes) log-probabilities, or (M, targets) scaled values."""
    if task.spec.target == "class":
        proba = np.zeros((features.shape[0], task.spec.num_classes))
        # a class absent from the training split has no column: it gets probability 0 (clipped below)
        proba[:, model.classes_.astype(np.int64)] = model.predict_proba(features)
        return np.log(np.clip(proba, 1e-12, 1.0))
    # C order: MultiOutputRegressor stacks its targets column-major, and the metrics .view the batches
    return np.ascontiguousarray(model.predict(features), dtype=np.float64).reshape(features.shape[0], -1)


def _score(task, eval_cfg, outputs: np.ndarray, x: np.ndarray, y: torch.Tensor) -> dict[str, float]:
    """The metrics ``evaluate_model`` gives the network: the task's evaluator and its mean loss, fed
    in evaluation-sized batches."""
    evaluator = task.evaluator(eval_cfg)
    loss_sum, count = 0.0, 0.0
    for start in range(0, len(y), eval_cfg.batch_size):
        stop = start + eval_cfg.batch_size
        out = torch.as_tensor(outputs[start:stop], dtype=torch.float32)
        loss, n = task.loss(out, y[start:stop])
        loss_sum += float(loss) * float(n)
        count += float(n)
        evaluator.update(out, y[start:stop], torch.as_tensor(x[start:stop]))
    metrics = dict(evaluator.compute(task.spec.class_names))
    metrics["loss"] = loss_sum / max(count, 1e-12)
    return metrics


# -- what people read --------------------------------------------------------------------------------

def _scored(baselines: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(key, entry) of each baseline, in the order fitted (the protocol line is not one)."""
    return [(k, v) for k, v in baselines.items() if isinstance(v, dict)]


def verdict(network: float, baselines: dict[str, Any], metric: str, higher_is_better: bool) -> str | None:
    """One line: the network against the best baseline on ``metric`` (None when none scored it)."""
    values = {BASELINE_NAMES.get(k, k): e["metrics"][metric] for k, e in _scored(baselines)
              if metric in e.get("metrics", {})}
    if not values:
        return None
    sign = 1 if higher_is_better else -1
    best = max(values, key=lambda k: sign * values[k])
    gap = sign * (network - values[best])  # > 0: the network is better
    if abs(gap) < 1e-9:
        return f"the network ties the best baseline ({best}) on {metric}"
    if higher_is_better:  # accuracy, R², ROC-AUC...: fractions, read in points
        size = f"{abs(gap) * 100:.1f} points"
        if gap > 0:
            return f"the network is {size} of {metric} above the best baseline ({best})"
        return f"the network is {size} of {metric} below the best baseline: {best} scores higher on this split"
    size = f"{abs(gap) / max(abs(values[best]), 1e-12) * 100:.1f}%"  # an error (RMSE): relative to the baseline's
    if gap > 0:
        return f"the network's {metric} is {size} lower than the best baseline's ({best})"
    return f"the network's {metric} is {size} higher than the best baseline's: {best} scores better on this split"


def baseline_line(metrics: dict[str, Any], metric: str) -> str | None:
    """The summary line printed after training: the network's main metric beside the baselines'."""
    baselines = metrics.get("baselines")
    network = metrics.get("metrics", {}).get(metric)
    if not baselines or network is None:
        return None
    parts = [f"network {network:.4f}"]
    for key, entry in _scored(baselines):
        value = entry.get("metrics", {}).get(metric)
        parts.append(f"{BASELINE_NAMES.get(key, key)} " + (f"{value:.4f}" if value is not None else "failed"))
    return f"baselines ({metric}, {metrics.get('split', 'test')} split): " + " · ".join(parts)


@register_section("baselines")
def baselines_section(run) -> tuple[str, str] | None:
    """The report's "Baselines" section: a bar chart of the main metric, the table, the protocol."""
    metrics = run.metrics
    baselines = metrics.get("baselines")
    if not baselines:
        return None
    task = run.task
    metric = task.main_metric
    higher = task.greater_is_better.get(metric, False)
    network = metrics.get("metrics", {})
    rows = [{"model": f"network ({run.config.model.family})", "fit_s": metrics.get("training", {}).get("duration_s"),
             **network}]
    for key, entry in _scored(baselines):
        name = BASELINE_NAMES.get(key, key)
        rows.append({"model": name, "fit_s": entry["fit_s"], **entry["metrics"]} if "metrics" in entry
                    else {"model": name, "fit_s": "-", "error": entry.get("error", "failed")})
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = html_table([{k: row.get(k, "-") for k in columns} for row in rows])
    parts = []
    chart = _chart([(row["model"], row[metric]) for row in rows if isinstance(row.get(metric), (int, float))],
                   metric, higher)
    if chart:
        parts.append(chart)
    line = verdict(network[metric], baselines, metric, higher) if metric in network else None
    if line:
        parts.append(f"<p><b>{html.escape(line[0].upper() + line[1:])}.</b></p>")
    parts.append(table)
    notes = [f"{BASELINE_NAMES.get(k, k)}: {e['warning']}" for k, e in _scored(baselines) if e.get("warning")]
    protocol = baselines.get("protocol", "")
    parts.append(f"<p>Baselines {html.escape(protocol)}, with scikit-learn's defaults and the network's own "
                 f"metrics; fit_s is the network's training time beside theirs. Nothing of them is saved, so "
                 f"<code>layerwise evaluate --data</code> scores the network alone.</p>")
    parts += [f"<p>{html.escape(note)}</p>" for note in notes]
    return "Baselines", "\n".join(parts)


def _chart(values: list[tuple[str, float]], metric: str, higher: bool) -> str | None:
    """Horizontal bars, the network first and in its own colour, each labelled with its value."""
    if len(values) < 2:  # every baseline failed: nothing to compare
        return None
    plt = pyplot()
    names, scores = [n for n, _ in values], [v for _, v in values]
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(values) + 1.0))
    colors = ["#3b6fd4"] + ["#9aa3b5"] * (len(values) - 1)
    bars = ax.barh(range(len(values)), scores, color=colors)
    ax.set_yticks(range(len(values)), names)
    ax.invert_yaxis()  # the network on top
    ax.bar_label(bars, labels=[f"{v:.4f}" for v in scores], padding=3, fontsize=8)
    ax.set_xlabel(f"{metric} on the scored split ({'higher' if higher else 'lower'} is better)")
    ax.margins(x=0.15)
    ax.grid(axis="x", alpha=0.3)
    return figure_html(fig, f"{metric}: network vs baselines")
