"""Reading new inputs for a trained run (predict, evaluate --data), with its saved preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .kinds import Inputs, input_kind

__all__ = ["Inputs", "read_inputs", "predict_inputs", "write_predictions"]


def read_inputs(source: Any, run, need_labels: bool = False) -> Inputs:
    """New inputs for ``run``, read as its input kind reads them (``InputKind.read_inputs``): a path
    (CSV, Parquet, NPZ, image, folder, text), a DataFrame, an array or a list of texts."""
    return input_kind(run.spec).read_inputs(source, run, need_labels)


@torch.no_grad()
def predict_inputs(run, source: Any) -> dict[str, Any]:
    """Predictions in batches: labels and probabilities, or values; plus ids and true labels."""
    from ..core.device import resolve_device
    from .loader import BatchLoader

    inputs = read_inputs(source, run)
    device = resolve_device(run.config.train.device)
    model = run.model.to(device).eval()
    loader = BatchLoader(inputs.split, run.config.evaluate.batch_size,
                         transform=run.preprocessing.inputs.batch, device=device)
    parts: dict[str, list[torch.Tensor]] = {}
    for x, _ in loader:
        for k, v in run.task.predict(model(x)).items():
            parts.setdefault(k, []).append(v.cpu())
    result: dict[str, Any] = {k: torch.cat(v).numpy() for k, v in parts.items()}
    result["ids"] = inputs.ids
    if inputs.labels is not None:
        result["true"] = inputs.labels
    return result


def write_predictions(run, preds: dict[str, Any], out: Path) -> Path:
    """A CSV: id, the true label when known, the prediction and one probability column per class."""
    import pandas as pd

    from ..core.io import atomic_write

    frame = pd.DataFrame({"id": preds["ids"]})
    if run.spec.target == "class":
        classes = run.preprocessing.classes
        if "true" in preds:
            frame["true"] = preds["true"]
        frame["pred"] = [classes[i] for i in preds["label"]]
        for j, name in enumerate(run.spec.class_names):
            frame[f"prob_{name}"] = preds["proba"][:, j]
    else:
        names = run.spec.target_names or [f"target{j}" for j in range(run.spec.num_targets)]
        if "true" in preds:
            true = np.asarray(preds["true"], dtype=float).reshape(len(frame), -1)
            for j, name in enumerate(names):
                frame[f"true_{name}"] = true[:, j]
        for j, name in enumerate(names):
            frame[f"pred_{name}"] = preds["value"][:, j]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: frame.to_csv(tmp, index=False))
    return out
