"""Reading new inputs for a trained run (predict, evaluate --data), with its saved preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import DataError
from .images import IMAGE_SUFFIXES, image_files, load_images
from .spec import Split

__all__ = ["read_inputs", "predict_inputs", "write_predictions"]


@dataclass
class Inputs:
    split: Split  # stored inputs (uint8 images / float features) and encoded labels (or -1 / NaN)
    ids: list[str]
    labels: np.ndarray | None  # the original label values, when the input had them


def _frame_inputs(frame, run, origin: str, need_labels: bool) -> Inputs:
    pre = run.preprocessing
    target_cols = run.spec.target_names or ["target"]
    has = all(c in frame.columns for c in target_cols)
    if need_labels and not has:
        raise DataError(f"{origin}: target column '{target_cols[0]}' is missing; evaluation needs labels")
    labels = None
    if has:
        labels = frame[target_cols[0]].to_numpy() if len(target_cols) == 1 else frame[target_cols].to_numpy()
    x = torch.from_numpy(pre.inputs.transform(frame, origin))
    return Inputs(Split(x, _encode(labels, run, origin, len(x))), [str(i) for i in range(len(x))], labels)


def _encode(labels, run, origin: str, n: int) -> torch.Tensor:
    pre = run.preprocessing
    if labels is None:
        if run.spec.target == "class":
            return torch.full((n,), -1, dtype=torch.long)
        return torch.full((n, run.spec.num_targets), float("nan"))
    if run.spec.target == "numeric":
        from .pipeline import _numeric_target

        labels = _numeric_target(np.asarray(labels), origin)
    return torch.as_tensor(pre.encode_labels(np.asarray(labels), origin))


def _image_inputs(pixels: np.ndarray, ids: list[str], labels, run, origin: str) -> Inputs:
    pre = run.preprocessing.inputs
    if pixels.shape[1:] != (pre.channels, *pre.size):
        raise DataError(f"{origin}: images have shape {tuple(pixels.shape[1:])}; the model expects "
                        f"{(pre.channels, *pre.size)} (channels, height, width)")
    return Inputs(Split(torch.as_tensor(pixels), _encode(labels, run, origin, len(pixels))), ids, labels)


def read_inputs(source: Any, run, need_labels: bool = False) -> Inputs:
    """Inputs from a path (CSV, Parquet, NPZ, image, folder, text), a DataFrame, an array or a list of texts."""
    import pandas as pd

    kind = run.spec.kind
    if getattr(run.preprocessing.inputs, "kind", None) == "text":
        return _text_inputs(source, run, need_labels)
    if getattr(run.preprocessing.inputs, "kind", None) == "timeseries":
        raise DataError(f"{run.path} is a forecasting run: it reads recent history rather than samples; use "
                        f"`layerwise forecast RUN --input FILE.csv` (run.forecast), or evaluate its own splits")
    if isinstance(source, pd.DataFrame):
        if kind != "tabular":
            raise DataError(f"a DataFrame was given but the run expects {kind} inputs")
        return _frame_inputs(source.reset_index(drop=True), run, "DataFrame", need_labels)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        arr = np.asarray(source)
        if kind == "tabular":
            names = run.preprocessing.inputs.numeric + run.preprocessing.inputs.categorical
            if arr.ndim != 2 or arr.shape[1] != len(names):
                raise DataError(f"array of shape {arr.shape}: expected (N, {len(names)}) columns {', '.join(names[:8])}")
            return _frame_inputs(pd.DataFrame(arr, columns=names), run, "array", need_labels)
        from .npz import as_kind

        _, pixels = as_kind(arr, Path("array"))
        return _image_inputs(pixels, [str(i) for i in range(len(pixels))], None, run, "array")

    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"input not found: {path}")
    suffix = path.suffix.lower()
    if suffix in {".csv", ".parquet", ".pq", ".tsv"}:
        if kind != "tabular":
            raise DataError(f"{path}: a table was given but the run expects {kind} inputs (an image folder or .npz)")
        from .tabular import read_table

        return _frame_inputs(read_table(path, getattr(run.config.data, "delimiter", ",")),
                             run, str(path), need_labels)
    if suffix == ".npz":
        from .npz import as_kind, read_npz

        arrays = read_npz(path, need_y=need_labels)
        x_key, y_key = ("x_test", "y_test") if "x_test" in arrays and "x" not in arrays else ("x", "y")
        labels = arrays.get(y_key)
        data_kind, x = as_kind(arrays[x_key], path)
        if data_kind != kind:
            raise DataError(f"{path}: holds {data_kind} data but the run expects {kind} inputs")
        if kind == "tabular":
            # an array has no column names: its columns are the run's feature columns, in order
            names = run.preprocessing.inputs.numeric + run.preprocessing.inputs.categorical
            if x.shape[1] != len(names):
                raise DataError(f"{path}: 'x' has {x.shape[1]} columns; the run expects {len(names)} "
                                f"({', '.join(names[:8])}{'...' if len(names) > 8 else ''})")
            frame = x.set_axis(names, axis=1)
            inputs = _frame_inputs(frame, run, str(path), False)
            return Inputs(Split(inputs.split.x, _encode(labels, run, str(path), len(frame))), inputs.ids, labels)
        return _image_inputs(x, [str(i) for i in range(len(x))], labels, run, str(path))
    if kind != "image":
        raise DataError(f"{path}: expected a .csv, .parquet or .npz file for this tabular run")
    pre = run.preprocessing.inputs
    channels = pre.channels
    if path.is_file():
        if suffix not in IMAGE_SUFFIXES:
            raise DataError(f"{path}: unsupported input type; give an image, a folder of images or a .npz file")
        pixels = load_images([path], pre.size, channels)
        return _image_inputs(pixels, [path.name], None, run, str(path))
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:  # class sub-folders: labelled by folder name
        files, labels = [], []
        for d in subdirs:
            found = image_files(d)
            files += found
            labels += [d.name] * len(found)
        labels = np.array(labels, dtype=object)
        classes = [str(c) for c in run.preprocessing.classes or []]
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise DataError(f"{path}: class folder(s) {', '.join(unknown[:5])} are not among the run's classes "
                            f"{', '.join(classes[:12])}; rename or remove them")
        # map folder names back to the original label values
        back = {str(c): c for c in run.preprocessing.classes}
        labels = np.array([back[name] for name in labels], dtype=object)
    else:
        files, labels = image_files(path), None
    if not files:
        raise DataError(f"{path}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if need_labels and labels is None:
        raise DataError(f"{path}: evaluation needs labels: put the images in one sub-folder per class")
    pixels = load_images(files, pre.size, channels)
    return _image_inputs(pixels, [str(f.relative_to(path)) for f in files], labels, run, str(path))


def _text_inputs(source: Any, run, need_labels: bool) -> Inputs:
    """Text runs: a language model scores a text file or folder (or a table's text column) cut into
    blocks as in training; a text classifier reads a table, a DataFrame or a list of strings."""
    import pandas as pd

    from .tabular import read_table
    from .text import TABLE_SUFFIXES, read_text, table_texts, text_blocks

    pre, cfg = run.preprocessing.inputs, run.config.data
    path = None if isinstance(source, (pd.DataFrame, list, tuple, np.ndarray)) else Path(source).expanduser()
    if path is not None and not path.exists():
        raise DataError(f"input not found: {path}")
    table = path is not None and path.is_file() and path.suffix.lower() in TABLE_SUFFIXES
    if run.spec.target == "token":
        if path is None:
            raise DataError("a language model reads a text file or folder (or a table with a text column); give a path")
        if table:
            frame = read_table(path, cfg.delimiter)
            content = "\n".join(table_texts(frame, cfg, str(path)))
        else:
            content = read_text(path, key="--data")
        split = text_blocks(pre, content, str(path), "give a longer text (block_size is fixed by the run)")
        return Inputs(split, [str(i) for i in range(len(split))], None)
    if path is None:
        frame = source if isinstance(source, pd.DataFrame) else pd.DataFrame({cfg.text_column: list(source)})
        origin = "DataFrame" if isinstance(source, pd.DataFrame) else "list of texts"
    elif table:
        frame, origin = read_table(path, cfg.delimiter), str(path)
    else:
        raise DataError(f"{path}: expected a CSV or Parquet table with a '{cfg.text_column}' column for this "
                        f"text classification run")
    frame = frame.reset_index(drop=True)
    texts = table_texts(frame, cfg, origin)
    labels = frame[cfg.label_column].to_numpy() if cfg.label_column in frame.columns else None
    if need_labels and labels is None:
        raise DataError(f"{origin}: label column '{cfg.label_column}' is missing; evaluation needs labels")
    x = pre.encode_padded(texts)
    return Inputs(Split(x, _encode(labels, run, origin, len(x))), [str(i) for i in range(len(x))], labels)


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
