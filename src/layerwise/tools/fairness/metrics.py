"""Group metrics (fairlearn's MetricFrame: count, accuracy, selection rate, TPR, FPR; the parity
differences) and the threshold mitigation (fairlearn's ThresholdOptimizer, Hardt et al. 2016)."""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Any

import numpy as np
import torch

from ...core.errors import DataError


def probabilities(run, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """(N, classes) predicted probabilities of the run's model for stored (encoded) inputs."""
    model = run.model.cpu().eval()
    transform = run.preprocessing.inputs.batch
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            parts.append(run.task.predict(model(transform(x[start:start + batch_size])))["proba"])
    return torch.cat(parts).numpy()


def _plain(value: Any) -> Any:
    """JSON-friendly: numpy scalars to Python, NaN (a rate with no sample to measure) to None."""
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and math.isnan(value) else value


def _frame(metrics: dict, y_true, y_pred, groups, order: list[str]) -> tuple[list[dict], dict]:
    """fairlearn's MetricFrame: rows per group (in ``order``) and the overall values."""
    import pandas as pd
    from fairlearn.metrics import MetricFrame

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a group with no positives has no TPR: NaN, shown as such
        frame = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred,
                            sensitive_features=pd.Series(groups, name="group"))
    by_group = frame.by_group.reindex(order)
    rows = [{"group": str(g), **{k: _plain(v) for k, v in row.items()}} for g, row in by_group.iterrows()]
    overall = {k: _plain(v) for k, v in frame.overall.items()}
    for row in [*rows, overall]:
        row["count"] = int(row["count"])
    return rows, overall


def binary_metrics(y_true, y_pred, groups, order):
    """Per group: count, accuracy, selection rate, TPR, FPR; the DP and EO differences (0/1 labels)."""
    from fairlearn.metrics import (
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score

    metrics = {"count": count, "accuracy": accuracy_score, "selection_rate": selection_rate,
               "tpr": partial(true_positive_rate, pos_label=1), "fpr": partial(false_positive_rate, pos_label=1)}
    rows, overall = _frame(metrics, y_true, y_pred, groups, order)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dp = demographic_parity_difference(y_true, y_pred, sensitive_features=groups)
        eo = equalized_odds_difference(y_true, y_pred, sensitive_features=groups)
    return rows, overall, float(dp), float(eo)


def multiclass_metrics(y_true, y_pred, groups, order, classes: list[str]):
    """Per group: count, accuracy and each class's selection rate; DP/EO per class one vs rest."""
    from fairlearn.metrics import (
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        selection_rate,
    )
    from sklearn.metrics import accuracy_score

    metrics = {"count": count, "accuracy": accuracy_score}
    metrics.update({f"selection_rate[{name}]": partial(selection_rate, pos_label=c) for c, name in enumerate(classes)})
    rows, overall = _frame(metrics, y_true, y_pred, groups, order)
    per_class = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c, name in enumerate(classes):
            t, p = (y_true == c).astype(int), (y_pred == c).astype(int)
            per_class[name] = {
                "demographic_parity_difference": float(demographic_parity_difference(t, p, sensitive_features=groups)),
                "equalized_odds_difference": float(equalized_odds_difference(t, p, sensitive_features=groups))}
    dp = max(v["demographic_parity_difference"] for v in per_class.values())
    eo = max(v["equalized_odds_difference"] for v in per_class.values())
    return rows, overall, dp, eo, per_class


# -- mitigation -----------------------------------------------------------------------------------------


def threshold_mitigation(run, constraint: str, positive: int, fit: tuple, apply: tuple, seed: int):
    """Fit ThresholdOptimizer on ``fit`` = (x, y 0/1, groups) and predict 0/1 for ``apply``'s x and groups."""
    from fairlearn.postprocessing import ThresholdOptimizer

    from .estimator import RunClassifier

    (x_fit, y_fit, g_fit), (x_apply, g_apply) = fit, apply
    unseen = sorted(set(g_apply.tolist()) - set(g_fit.tolist()))
    if unseen:
        raise DataError(f"--mitigate: group(s) {', '.join(unseen[:5])} do not occur in the validation split, so no "
                        f"threshold can be fitted for them; use fewer --bins or a larger data.val_fraction")
    optimizer = ThresholdOptimizer(estimator=RunClassifier(partial(probabilities, run), positive), constraints=constraint,
                                   objective="accuracy_score", prefit=True, predict_method="predict_proba")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer.fit(x_fit.numpy(), y_fit, sensitive_features=g_fit)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"--mitigate: fairlearn cannot fit thresholds on the validation split ({first})") from None
    pred = np.asarray(optimizer.predict(x_apply.numpy(), sensitive_features=g_apply, random_state=seed)).astype(int)
    thresholds = {str(g): {key: (_plain(v) if key.startswith("p") else str(v)) for key, v in rule.items()}
                  for g, rule in optimizer.interpolated_thresholder_.interpolation_dict.items()}
    return pred, thresholds


def parity_summary(y_true, y_pred, groups, order) -> dict[str, Any]:
    rows, overall, dp, eo = binary_metrics(y_true, y_pred, groups, order)
    return {"accuracy": overall["accuracy"], "demographic_parity_difference": dp, "equalized_odds_difference": eo,
            "selection_rate": {row["group"]: row["selection_rate"] for row in rows}}
