"""Runs: training an experiment into a run directory, and loading one back.

A run directory holds everything needed to evaluate, predict and report without the original
code or data: the resolved ``config.yaml``, ``data.json`` (the data spec and the preprocessing
fitted on the training split), ``model.safetensors`` (weights plus metadata; never pickle),
``checkpoints/``, ``history.csv``, ``metrics.json`` and ``report.html``.

Loading one reads data only; a run whose model is user code (the ``python`` family) is built only
when trusted (``load_run(path, trust_code=True)``, the CLI's ``--trust-run``; see ``trust.py``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..core import __version__
from ..core.config import ExperimentConfig, with_defaults
from ..core.device import resolve_device
from ..core.errors import ConfigError, LayerwiseError, RunError
from ..core.io import atomic_write
from ..data import SOURCES, DataBundle, load_data
from ..data.loader import BatchLoader
from ..data.pipeline import Preprocessing
from ..data.spec import DataSpec, Split
from ..models import FAMILIES, LayerwiseModel, build_model, wrap_module
from ..tasks import TASKS, infer_task
from ..tasks.evaluation import EvalResult, evaluate_model
from ..train import Callback, Checkpoint, EarlyStopping, EpochPrinter, HistoryCSV, ProgressBar, Trainer, seed_everything
from ..train.adversarial import adversarial_task
from ..train.energy import EnergyCallback
from ..train.strategies import STRATEGIES
from .config import load_config, resolve_task_options
from .resume import RecordResume, resume_changes
from .tools import TOOLS
from .trust import check_model_code, trusted

__all__ = ["Run", "train", "load_run", "prepare", "prepare_bundle"]


class Prepared:
    """A validated experiment with its data, task and model built, before any file is written."""

    def __init__(self, config: ExperimentConfig, bundle: DataBundle, task, model: LayerwiseModel):
        self.config, self.bundle, self.task, self.model = config, bundle, task, model


def prepare(config: ExperimentConfig, model: torch.nn.Module | None = None) -> Prepared:
    """Load data, pick the task, build the model: everything that can fail on bad input."""
    seed_everything(config.train.seed)
    return prepare_bundle(config, load_data(config.data, config.task), model)


def prepare_bundle(config: ExperimentConfig, bundle: DataBundle, model: torch.nn.Module | None = None) -> Prepared:
    """Pick the task and build the model for data already loaded (cross-validation folds too)."""
    family_cls = FAMILIES.get(config.model.family)
    task_name = config.task or infer_task(bundle.spec, family_cls, SOURCES.get(config.data.source))
    task_cls = TASKS.get(task_name)
    if task_cls.target is not None and task_cls.target != bundle.spec.target:
        raise ConfigError(f"task: '{task_name}' needs a {task_cls.target} target, but {config.data.source} data "
                          f"gives a {bundle.spec.target} target; change task or the data")
    options = resolve_task_options(config, task_cls, bundle.spec)
    config = config.model_copy(update={"task": task_name, "task_options": options,
                                       "model": with_defaults(config.model, task_cls.model_defaults, "model")})
    task = task_cls(bundle.spec, config.train, bundle.preprocessor, bundle.train.y, config=options)
    seed_everything(config.train.seed)  # weights do not depend on how much randomness loading used
    net = wrap_module(model, bundle.spec) if model is not None else build_model(config.model, bundle.spec)
    if model is not None:
        config = config.model_copy(update={"model": net.config})
    task.check_model(net)
    _check_monitors(config, task)
    # refuses what it cannot attack
    task = adversarial_task(task, getattr(options, "adversarial_training", None), bundle)
    return Prepared(config, bundle, task, net)


def _check_monitors(config: ExperimentConfig, task) -> None:
    """Metrics watched by early stopping or a plateau schedule must be logged (else they never act)."""
    watched = []
    if config.train.early_stopping is not None:
        watched.append(("train.early_stopping.monitor", config.train.early_stopping.monitor))
    if config.train.scheduler.name == "plateau":
        watched.append(("train.scheduler.monitor", config.train.scheduler.monitor))
    known = ["loss", task.main_metric, *task.greater_is_better]
    for key, monitor in watched:
        base = monitor.split("_", 1)[1] if monitor.startswith(("val_", "train_")) else None
        if base is None or base not in known or (monitor.startswith("train_") and base not in ("loss", task.main_metric)):
            raise ConfigError(f"{key}: '{monitor}' is not a logged metric; "
                              f"use val_loss, val_{task.main_metric} or train_loss")
        if config.data.val_fraction == 0 and monitor.startswith("val_"):
            raise ConfigError(f"{key}: watches a validation metric but data.val_fraction is 0")


def loaders(bundle: DataBundle, cfg: ExperimentConfig, device: torch.device):
    """Training loader (shuffled, augmented, maybe weighted) and a validation loader."""
    weights = None
    if cfg.data.sampler == "weighted":
        if bundle.spec.target != "class":
            raise ConfigError("data.sampler: 'weighted' needs class labels; use 'random' for regression")
        counts = torch.bincount(bundle.train.y, minlength=bundle.spec.num_classes).float().clamp_(min=1)
        weights = (1.0 / counts)[bundle.train.y]
    transform = bundle.preprocessor.inputs.batch
    train = BatchLoader(bundle.train, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed, transform=transform,
                        train=True, weights=weights, device=device)
    val = None
    if bundle.val is not None and len(bundle.val):
        val = BatchLoader(bundle.val, cfg.evaluate.batch_size, transform=transform, device=device)
    return train, val


def _new_run_dir(runs_dir: Path, name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = runs_dir / f"{name}-{stamp}"
    n = 2
    while path.exists():
        path = runs_dir / f"{name}-{stamp}-{n}"
        n += 1
    return path


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=_json_default)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _json_default(obj):
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def save_model(path: Path, model: LayerwiseModel, config: ExperimentConfig, spec: DataSpec) -> None:
    """Weights in safetensors with the metadata needed to rebuild the model."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # safetensors refuses shared storage; clone tensors that alias another (tied weights)
    seen: dict[int, str] = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -id(v)
        if ptr in seen:
            tensors[k] = v.clone()
        seen[ptr] = k
    metadata = {"format": "layerwise", "layerwise_version": __version__, "family": model.config.family,
                "model_config": json.dumps(model.config.model_dump(mode="json")),
                "task": config.task or "", "spec": json.dumps(spec.to_dict())}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def train(config: str | Path | Mapping[str, Any] | ExperimentConfig | None = None, *,
          model: torch.nn.Module | None = None, runs_dir: str | Path = "runs", resume: str | Path | None = None,
          callbacks: Iterable[Callback] = (), quiet: bool = False, overrides: Iterable[str] | None = None,
          trust_code: bool = False, **kwargs: Any) -> "Run":
    """Train an experiment and return its :class:`Run`.

    ``config`` is a YAML path, a dict, an :class:`ExperimentConfig` or None (the embedded default:
    a CNN on the bundled digits). Keyword overrides use dots or double underscores:

    >>> run = layerwise.train("examples/iris.yaml", train__epochs=5)          # doctest: +SKIP
    >>> run = layerwise.train({"data": {"name": "iris"}, "model": {"family": "mlp"}})  # doctest: +SKIP
    >>> run = layerwise.train(resume="runs/iris-20260101-120000")               # doctest: +SKIP

    ``trust_code``: resuming a run whose model is user code (the ``python`` family) imports that
    code again; like loading such a run, it needs ``trust_code=True`` (the CLI's ``--trust-run``)
    unless this process already ran that code from your own config.
    """
    from rich.console import Console

    console = Console(stderr=True, quiet=quiet)
    extra = dict(kwargs)
    if overrides:
        from ..core.config import parse_override

        extra.update(dict(parse_override(o) for o in overrides))
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise RunError(f"--resume: {run_dir} is not a run directory (no config.yaml)")
        saved = load_config(run_dir / "config.yaml")
        cfg = load_config(saved, extra or None)  # the saved config, read once, with this resume's overrides
        check_model_code(cfg.model, run_dir, trust_code)  # a resumed python-family run imports its file again
        changes = resume_changes(saved, cfg)  # refuses what a resume cannot honour, in one line
        checkpoint = run_dir / "checkpoints" / "last.pt"
        if not checkpoint.is_file():
            raise RunError(f"--resume: {run_dir} has no checkpoint yet; start the experiment again instead")
    else:
        cfg = load_config(config, extra or None)
        checkpoint = None
    prepared = prepare(cfg, model)
    cfg, bundle, task, net = prepared.config, prepared.bundle, prepared.task, prepared.model
    device = resolve_device(cfg.train.device)
    train_loader, val_loader = loaders(bundle, cfg, device)
    energy = None if cfg.train.energy == "off" else EnergyCallback(device, cfg.train.energy, cfg.train.energy_country)

    if resume is None:
        run_dir = _new_run_dir(Path(runs_dir), cfg.name)
        run_dir.mkdir(parents=True)
        atomic_write(run_dir / "config.yaml", lambda tmp: Path(tmp).write_text(cfg.to_yaml()))
        weight = getattr(task, "weight", None)  # resolved 'balanced' class weights: the loss needs them later
        _write_json(run_dir / "data.json", {"spec": bundle.spec.to_dict(), "preprocessing": bundle.preprocessor.to_dict(),
                                            "class_weight": None if weight is None else weight.tolist()})
        if model is not None and cfg.model.family == "python":
            console.print(f"[dim]user module {cfg.model.target}: load_run needs it importable to rebuild[/dim]")

    cbs: list[Callback] = [ProgressBar(console) if cfg.train.progress and not quiet else Callback(),
                           EpochPrinter(console) if not quiet else Callback(),
                           HistoryCSV(run_dir / "history.csv")]
    if cfg.train.early_stopping is not None:
        cbs.insert(0, EarlyStopping.from_config(cfg.train.early_stopping))
    cbs += task.callbacks(run_dir) + list(callbacks)
    if energy is not None:
        cbs.append(energy)
    # last: a checkpoint holds what every other callback did for its step or epoch (the diffusion
    # task's EMA update of the step, early stopping's count, the energy meter), so a resume is exact
    kept = cfg.train.checkpoints
    cbs.append(Checkpoint(run_dir / "checkpoints", cfg.train.checkpoint_every, keep_last=kept.keep_last,
                          keep_best=kept.keep_best, monitor=kept.monitor))
    if resume is not None and changes:
        # e.g. --resume RUN --set train.epochs=30 extends a run: its config says so once the loop has
        # accepted the change (a schedule fixed by the run's length refuses it before this)
        cbs.insert(0, RecordResume(run_dir / "config.yaml", cfg, changes))
    trainer = Trainer(net, task, cfg.train, callbacks=cbs, device=device, eval_cfg=cfg.evaluate)
    if checkpoint is not None:
        trainer.resume_from(checkpoint)
        if "train.lr" in changes:
            old, new = changes["train.lr"]
            trainer.lr_scale = new / old
    strategy = STRATEGIES.get(cfg.train.strategy)(cfg.train)  # where the fit runs: this process (local), ...
    console.print(f"[bold]{cfg.name}[/bold]: {cfg.model.family} on {bundle.spec.kind} data "
                  f"({len(bundle.train)} train / {len(bundle.val) if bundle.val else 0} val / "
                  f"{len(bundle.test) if bundle.test else 0} test), task {cfg.task}, device {device}", highlight=False)
    console.print(f"run directory: {run_dir}", highlight=False)
    started = time.perf_counter()
    try:
        strategy.fit(trainer, train_loader, val_loader)
    except LayerwiseError:
        if resume is None and not (run_dir / "checkpoints" / "last.pt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping: no half-written run
        raise
    duration = time.perf_counter() - started

    save_model(run_dir / "model.safetensors", net, cfg, bundle.spec)
    run = Run(run_dir)
    run._model = net.eval()
    run._data = bundle  # the report reuses it rather than reading the data again
    split = cfg.evaluate.split if getattr(bundle, cfg.evaluate.split) is not None else "val"
    result = run._evaluate_split(bundle, split, device)
    training = {"duration_s": duration, "device": str(device), "epochs_run": trainer.epoch,
                "steps": trainer.global_step, "stop_reason": trainer.stop_reason or "completed",
                "restored_best_epoch": trainer.restored_epoch,
                "parameters": sum(p.numel() for p in net.parameters()), "layerwise_version": __version__,
                "torch_version": torch.__version__, "resumes": trainer.resumes}
    metrics = {"split": split, "metrics": dict(result), "details": result.details, "training": training,
               "energy": None if energy is None else energy.result}
    adversarial = getattr(cfg.task_options, "adversarial_training", None)
    if adversarial is not None and adversarial.eval_samples:
        metrics["robustness"] = task.robustness(net, bundle.split(split), split, device)  # clean vs robust accuracy
    _write_json(run_dir / "metrics.json", metrics)
    run.report()
    return run


class Run:
    """A trained run, loaded from its directory. Use :func:`load_run` or the result of :func:`train`.

    ``trust_code``: whether building its model may run code the run names (see :func:`load_run`)."""

    def __init__(self, path: str | Path, trust_code: bool = False):
        self.path = Path(path)
        # may building the model run code the run names (a python-family file, an older int8 program)?
        self.trust_code = trusted(trust_code)
        if not (self.path / "config.yaml").is_file() or not (self.path / "data.json").is_file():
            raise RunError(f"{self.path} is not a run directory (config.yaml or data.json missing)")
        self.config = load_config(self.path / "config.yaml")
        data = json.loads((self.path / "data.json").read_text())
        self.spec = DataSpec.from_dict(data["spec"])
        self.preprocessing = Preprocessing.from_dict(data["preprocessing"])
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
        from safetensors.torch import load_file

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
        net = wrap_module(module, self.spec) if module is not None else build_model(self.config.model, self.spec)
        try:
            net.load_state_dict(load_file(weights))
        except RuntimeError as exc:
            raise RunError(f"{weights}: the weights do not fit the rebuilt {self.config.model.family} model "
                           f"({str(exc).splitlines()[0]}); for your own module pass an instance built with the "
                           f"same arguments: run.load_model(MyNet(...))") from None
        net.eval()
        return net

    @property
    def history(self) -> list[dict[str, Any]]:
        path = self.path / "history.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as fh:
            return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]

    @property
    def metrics(self) -> dict[str, Any]:
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    # -- actions -----------------------------------------------------------------------------
    def _evaluate_split(self, bundle: DataBundle, split: str, device=None) -> EvalResult:
        # misclassified examples are kept by index into the split, for the report's grid
        return self._score(bundle.split(split), device, keep_misclassified=self.config.evaluate.misclassified)

    def _score(self, split: Split, device=None, keep_misclassified: int = 0) -> EvalResult:
        device = device or resolve_device(self.config.train.device)
        loader = BatchLoader(split, self.config.evaluate.batch_size, transform=self.preprocessing.inputs.batch,
                             device=device)
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


def _num(text: str) -> Any:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


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
