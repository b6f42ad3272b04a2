"""A run directory, loaded back: evaluate, predict and report without the original code or data.

A run directory (written by :func:`layerwise.train`, ``training.py``) holds the resolved
``config.yaml``, ``data.json`` (the data spec and the preprocessing fitted on the training split),
``model.safetensors`` (weights plus metadata; never pickle), ``checkpoints/``, ``history.csv``,
``metrics.json`` and ``report.html``.

Loading one reads data only; a run whose model is user code (the ``python`` family) is built only
when trusted (``load_run(path, trust_code=True)``, the CLI's ``--trust-run``; see ``trust.py``).
A damaged file is one line naming it (``files.py``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import ExperimentConfig
from ..core.device import resolve_device
from ..core.errors import ConfigError, RunError
from ..data import DataBundle, load_data
from ..data.loader import BatchLoader
from ..data.pipeline import Preprocessing
from ..data.spec import DataSpec, Split
from ..models import LayerwiseModel, build_model, wrap_module
from ..tasks import TASKS
from ..tasks.evaluation import EvalResult, evaluate_model
from ..train.checkpoint import state_mismatch
from .config import load_config
from .files import RECOMPRESS, RESTORE, read_json, read_weights, read_yaml, run_file_error
from .tools import TOOLS
from .trust import check_model_code, trusted

__all__ = ["Run", "load_run"]


class Run:
    """A trained run, loaded from its directory. Use :func:`load_run` or the result of :func:`train`.

    ``trust_code``: whether building its model may run code the run names (see :func:`load_run`)."""

    def __init__(self, path: str | Path, trust_code: bool = False):
        self.path = Path(path)
        # may building the model run code the run names (a python-family file, an older int8 program)?
        self.trust_code = trusted(trust_code)
        found = [name for name in ("config.yaml", "data.json") if (self.path / name).is_file()]
        if not found:
            raise RunError(f"{self.path} is not a run directory (config.yaml or data.json missing)")
        if len(found) == 1:  # the other one was lost since: a damaged run, not the wrong folder
            raise run_file_error(self.path / ({"config.yaml", "data.json"} - set(found)).pop(), "missing", RESTORE)
        self.config = _run_config(self.path / "config.yaml")
        path = self.path / "data.json"
        data = read_json(path, RESTORE, keys=("spec", "preprocessing"))
        try:
            self.spec = DataSpec.from_dict(data["spec"])
            self.preprocessing = Preprocessing.from_dict(data["preprocessing"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # JSON of another shape
            raise run_file_error(path, f"not a run's data description ({type(exc).__name__}: {exc})", RESTORE) from exc
        self._class_weight = data.get("class_weight")
        self._model: LayerwiseModel | None = None
        self._task = None
        self._data: DataBundle | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # -- loaded state ------------------------------------------------------------------------
    @property
    def task(self):
        if self._task is None:
            options = self.config.task_options
            if self._class_weight is not None and "class_weight" in type(options).model_fields:
                options = options.model_copy(update={"class_weight": self._class_weight})  # 'balanced' as resolved
            self._task = TASKS.get(self.config.task)(self.spec, self.config.train, self.preprocessing, None,
                                                     config=options)
            self._task.run_dir = self.path  # what the task keeps in its run (a continual run's weights by experience)
        return self._task

    @property
    def data(self) -> DataBundle:
        """The run's data, split and preprocessed as in training (read once, then kept)."""
        if self._data is None:
            self._data = load_data(self.config.data, self.config.task)
        return self._data

    @property
    def model(self) -> LayerwiseModel:
        if self._model is None:
            self._model = self.load_model()
        return self._model

    def load_model(self, module: torch.nn.Module | None = None) -> LayerwiseModel:
        """Rebuild the model and load its weights (``module``: a user module to load them into)."""
        if module is None:
            check_model_code(self.config.model, self.path, self.trust_code)
        if module is None and (self.path / "compression.json").is_file():
            # quantized or pruned: the compressor rebuilds the architecture it changed
            from .compressed import load_compressed_model

            return load_compressed_model(self)
        weights = self.path / "model.safetensors"
        if not weights.is_file():
            raise RunError(f"{self.path}: model.safetensors is missing; the run did not finish (resume it with --resume)")
        if module is None and self.config.model.family == "python" and self.config.model.target.startswith("__main__:"):
            raise RunError(f"{self.path}: the model is a class defined in a script ({self.config.model.target}); "
                           f"rebuild it and pass it: run.load_model(MyNet(...))")
        resume = f"write it again from the last checkpoint with `layerwise train --resume {self.path}`"
        tensors, metadata = read_weights(weights, f"{resume}, or train the run again")
        if metadata.get("format", "layerwise") != "layerwise":  # int8 weights of a compressed run
            raise run_file_error(self.path / "compression.json",
                                 f"missing, and {weights.name} holds compressed weights ({metadata['format']})",
                                 f"restore it from a copy of the run, or {RECOMPRESS}")
        net = wrap_module(module, self.spec) if module is not None else build_model(self.config.model, self.spec)
        self.task.extend_model(net)  # a pretraining task's projection head or decoder, saved with the model
        try:
            net.load_state_dict(tensors)
        except RuntimeError as exc:
            family = self.config.model.family
            model = "the module passed" if module is not None else f"the {family} model config.yaml describes"
            if module is not None or family == "python":
                fix = "for your own module pass an instance built with the same arguments: run.load_model(MyNet(...))"
            else:  # which of the two files is the other run's cannot be told: both are named
                fix = f"one of the two files is another run's: restore the run's own, or {resume}"
            raise run_file_error(weights, f"the weights do not fit {model} ({state_mismatch(exc)})", fix) from exc
        return merged_for_inference(net)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The epochs' logs from ``history.csv`` (none when it is absent)."""
        path = self.path / "history.csv"
        if not path.is_file():
            return []
        fix = (f"delete it (only the report reads it), or write it again from the last checkpoint with "
               f"`layerwise train --resume {self.path}`")
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise run_file_error(path, f"not a readable CSV file ({type(exc).__name__})", fix) from exc
        if rows and "epoch" not in rows[0]:
            raise run_file_error(path, "no 'epoch' column: not a training history", fix)
        short = next((i for i, row in enumerate(rows, 2) if None in row or None in row.values()), None)
        if short is not None:  # DictReader fills a short row with None and keeps a long one's extra under None
            raise run_file_error(path, f"line {short} does not have one value per column (truncated?)", fix)
        return [{k: _num(v) for k, v in row.items()} for row in rows]

    @property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` (empty when it is absent)."""
        path = self.path / "metrics.json"
        fix = "delete it (the report then leaves the metrics out), or train the run again"
        return read_json(path, fix) if path.is_file() else {}

    # -- actions -----------------------------------------------------------------------------
    def _evaluate_split(self, bundle: DataBundle, split: str, device=None) -> EvalResult:
        # misclassified examples are kept by index into the split, for the report's grid
        return self._score(bundle.split(split), device, keep_misclassified=self.config.evaluate.misclassified,
                           name=split)

    def _score(self, split: Split, device=None, keep_misclassified: int = 0, name: str = "external") -> EvalResult:
        device = device or resolve_device(self.config.train.device)
        transform = self.preprocessing.inputs.batch
        loader = self.task.loader(split, name, self.config, transform, device) or BatchLoader(
            split, self.config.evaluate.batch_size, transform=transform, device=device)
        return evaluate_model(self.model.to(device), self.task, loader, self.config.evaluate,
                              keep_misclassified=keep_misclassified, precision=self.config.train.precision, final=True)

    def evaluate(self, data: str | Path | None = None, split: str = "test") -> EvalResult:
        """Score the model on one of its splits, or on another labelled file or folder (``data``)."""
        if data is None:
            return self._evaluate_split(self.data, split)
        from ..data.inputs import read_inputs

        return self._score(read_inputs(data, self, need_labels=True).split)

    def predict(self, x: Any) -> dict[str, np.ndarray]:
        """Predict for inputs: a path (CSV, Parquet, NPZ, image or folder of images), a DataFrame,
        or an array of raw inputs (uint8 images (N, C, H, W) / a feature matrix).

        Returns ``label`` and ``proba`` (classification) or ``value`` (regression), and ``ids``.
        """
        from ..data.inputs import predict_inputs

        return predict_inputs(self, x)

    def predict_to_csv(self, x: Any, out: str | Path) -> Path:
        from ..data.inputs import write_predictions

        return write_predictions(self, self.predict(x), Path(out))

    def __getattr__(self, name: str):
        """Every tool whose subject is a run is a method: ``run.explain(samples=4)`` calls the tool
        ``explain`` (``layerwise.tools.explain``) with this run; its options and defaults are the tool's."""
        verb = name.replace("_", "-") if name not in TOOLS and name.replace("_", "-") in TOOLS else name
        if not name.startswith("_") and (verb in TOOLS or verb in TOOLS.names()):
            found = TOOLS.get(verb)
            if found.subject == "run":
                return found.bind(self)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *(n.replace("-", "_") for n, t in TOOLS.items() if t.subject == "run")})

    def report(self) -> Path:
        """(Re)write ``report.html`` and return its path."""
        from .report import write_report

        return write_report(self)


def _run_config(path: Path) -> ExperimentConfig:
    """A run's config.yaml. Training wrote it valid and complete (every section, every default), so
    an error now means it was damaged or replaced since: the message names the file and says so."""
    raw = read_yaml(path, RESTORE, keys=("data", "model", "train", "evaluate"))  # evaluate: written last
    try:
        return load_config(raw)
    except ConfigError as exc:
        raise run_file_error(path, str(exc), RESTORE) from exc


def _num(text: str) -> Any:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def merged_for_inference(net: torch.nn.Module) -> torch.nn.Module:
    """The model in eval mode, LoRA adapters folded into their layers (models/lora.py): every tool
    that takes a run's model (export, serve, compress, explain) sees plain linear layers."""
    from ..models.lora import merge_lora

    return merge_lora(net).eval()


def load_run(path: str | Path, trust_code: bool = False) -> Run:
    """Load a run directory: ``run = load_run("runs/digits-20261122-101500"); run.predict(x)``.

    A run directory is read as data. ``trust_code=True`` (the CLI's ``--trust-run``) also lets it
    run code: a ``python``-family model's file, an ExportedProgram written by an older layerwise.
    Give it only for a run you trust as you would trust its code (``docs/security.md``).
    """
    path = Path(path)
    if not path.exists():
        raise RunError(f"run directory not found: {path}")
    return Run(path, trust_code=trust_code)
