"""k-fold cross-validation: stratified folds, preprocessing refitted inside each fold (no leakage)."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..core.config import ExperimentConfig
from ..core.errors import ConfigError
from ..runs.config import load_config
from ..runs.tools import ToolOptions, option, register_tool

__all__ = ["CVOptions", "CVResult", "cross_validate"]


class CVResult(dict):
    """``{"folds": [metrics...], "mean": {...}, "std": {...}}`` with a printable summary."""

    def summary(self) -> list[tuple[str, float, float]]:
        return [(k, self["mean"][k], self["std"][k]) for k in self["mean"]]


def _take(x, idx: np.ndarray):
    return x.iloc[idx].reset_index(drop=True) if hasattr(x, "iloc") else x[idx]


class CVOptions(ToolOptions):
    folds: int = option(5, "number of folds")
    overrides: list[str] | None = option(None, "override a config key, e.g. --set train.epochs=3 (repeatable)",
                                         flag="--set", metavar="KEY=VALUE")
    runs_dir: Path | None = option(None, "write cv.json into a new folder here (Python: nothing is written "
                                   "unless given)", cli_default=Path("runs"))
    quiet: bool = option(False, "no line per fold")


@register_tool("cv", CVOptions, subject="config")
def cross_validate(config: str | Path | Mapping[str, Any] | ExperimentConfig | None, options: CVOptions) -> CVResult:
    """Stratified k-fold cross-validation of CONFIG: mean ± std of each metric.

    Trains ``folds`` models, each scored on the fold it did not see. The source's own test split (if any) is left out: folds are drawn from the training data.
    Each fold's training part keeps ``data.val_fraction`` aside for validation (early stopping).

    >>> res = cross_validate({"data": {"name": "iris"}, "model": {"family": "mlp"}}, folds=3)  # doctest: +SKIP
    >>> res["mean"]["accuracy"]                                                                # doctest: +SKIP
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    from ..core.device import resolve_device
    from ..data import SOURCES
    from ..data.loader import BatchLoader
    from ..data.pipeline import build_bundle, infer_target
    from ..runs.bagging import BagState
    from ..runs.prepare import loaders, prepare_bundle
    from ..runs.training import fit_bag_members
    from ..tasks.evaluation import evaluate_model
    from ..train import EarlyStopping, Trainer

    folds, overrides, quiet, out_dir = options.folds, options.overrides, options.quiet, options.runs_dir
    if folds < 2:
        raise ConfigError(f"--folds: cross-validation needs at least 2 folds; received {folds}")
    cfg = load_config(config, overrides)
    raw = SOURCES.get(cfg.data.source)().read(cfg.data, cfg.task)
    y = np.asarray(raw.y)
    target = raw.target or infer_target(y, cfg.task, raw.origin)
    if target == "class":
        _, counts = np.unique(y.astype(str), return_counts=True)
        if counts.min() < folds:
            raise ConfigError(f"--folds: the smallest class has {counts.min()} samples, fewer than {folds} folds; use fewer folds")
        splitter = StratifiedKFold(folds, shuffle=True, random_state=cfg.data.split_seed)
        split_on = y.astype(str)
    else:
        splitter = KFold(folds, shuffle=True, random_state=cfg.data.split_seed)
        split_on = None
    # each fold's held-out part acts as its test split; no further test share is carved out
    fold_data_cfg = cfg.data.model_copy(update={"test_fraction": 0.0})
    results = []
    for k, (train_idx, test_idx) in enumerate(splitter.split(np.zeros(len(y)), split_on)):
        fold_raw = replace(raw, x=_take(raw.x, train_idx), y=y[train_idx], x_test=_take(raw.x, test_idx),
                           y_test=y[test_idx], origin=f"{raw.origin} (fold {k + 1})")
        bundle = build_bundle(fold_raw, fold_data_cfg, cfg.task)
        fold_cfg = cfg.model_copy(update={"data": fold_data_cfg})
        prepared = prepare_bundle(fold_cfg, bundle)
        device = resolve_device(cfg.train.device)

        def stopping(config, task) -> list:
            return [EarlyStopping.from_config(es)] if (es := config.train.early_stopping) else []

        if prepared.config.model.bags > 1:  # each member on its own folds of the fold's rows, as `train` does
            fit_bag_members(prepared, BagState(prepared.config.model.bags), device, stopping,
                            lambda trainer, train_loader, val_loader: trainer.fit(train_loader, val_loader), None,
                            (lambda line: None) if quiet else print)
        else:
            train_loader, val_loader = loaders(bundle, prepared.config, device, prepared.task)
            trainer = Trainer(prepared.model, prepared.task, prepared.config.train, device=device,
                              eval_cfg=cfg.evaluate, callbacks=stopping(prepared.config, prepared.task))
            trainer.fit(train_loader, val_loader)
        transform = bundle.preprocessor.inputs.batch
        test_loader = prepared.task.loader(bundle.test, "test", prepared.config, transform, device) or BatchLoader(
            bundle.test, cfg.evaluate.batch_size, transform=transform, device=device)  # a task's own: episodes
        metrics = dict(evaluate_model(prepared.model, prepared.task, test_loader, cfg.evaluate))
        results.append(metrics)
        if not quiet:
            shown = ", ".join(f"{m} {v:.4f}" for m, v in metrics.items() if m in ("accuracy", "f1_macro", "rmse", "r2"))
            print(f"fold {k + 1}/{folds}: {shown}", flush=True)
    keys = [k for k in results[0] if all(k in r for r in results)]
    mean = {k: float(np.mean([r[k] for r in results])) for k in keys}
    std = {k: float(np.std([r[k] for r in results], ddof=1)) for k in keys}
    result = CVResult(folds=results, mean=mean, std=std, config=cfg.to_dict())
    if out_dir is not None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(out_dir) / f"{cfg.name}-cv{folds}-{stamp}"
        path.mkdir(parents=True, exist_ok=True)
        (path / "cv.json").write_text(json.dumps(result, indent=2))
        result["path"] = str(path)
    return result


@cross_validate.printer
def _print(result: CVResult, options: CVOptions) -> None:
    from ..core.console import rows_table

    rows = [{"metric": key, "mean": mean, "std": f"± {std:.4f}"} for key, mean, std in result.summary()]
    rows_table(f"{options.folds}-fold cross-validation", rows, left=("metric",))
    if "path" in result:
        print(f"results: {Path(result['path']) / 'cv.json'}")
