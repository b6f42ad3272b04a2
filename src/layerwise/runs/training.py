"""Training an experiment into a run directory: :func:`train`, and the steps it shares with tools.

``prepare`` validates the config and builds data, task and model before any file is written;
``train`` creates the run directory atomically and locked (``rundir.py``), fits with the one loop,
then writes the weights, the metrics and the report. A failure or an interrupt before the first
checkpoint removes the directory; after it, the message says how to ``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..core import __version__
from ..core.config import ExperimentConfig, with_defaults
from ..core.device import resolve_device
from ..core.errors import ConfigError, DiskFullError, RunError, TrainingInterrupted
from ..core.io import atomic_write
from ..data import SOURCES, DataBundle, load_data
from ..data.loader import BatchLoader
from ..data.spec import DataSpec
from ..models import FAMILIES, LayerwiseModel, build_model, wrap_module
from ..tasks import TASKS, infer_task
from ..train import Callback, Checkpoint, EarlyStopping, EpochPrinter, HistoryCSV, ProgressBar, Trainer, seed_everything
from ..train.adversarial import adversarial_task
from ..train.energy import EnergyCallback
from ..train.interrupt import StopSignals
from ..train.strategies import STRATEGIES
from .config import load_config, resolve_task_options
from .recipes import applies, apply_recipe, describe_recipe, named_family, with_family
from .resume import RecordResume, resume_changes
from .run import Run
from .selection import Candidate, candidates, choose
from .rundir import RunLock, create_run_dir
from .trust import check_model_code

__all__ = ["train", "prepare", "prepare_bundle", "loaders", "save_model"]


class Prepared:
    """A validated experiment with its data, task and model built, before any file is written."""

    def __init__(self, config: ExperimentConfig, bundle: DataBundle, task, model: LayerwiseModel,
                 notes: list[str] | None = None):
        self.config, self.bundle, self.task, self.model = config, bundle, task, model
        self.notes = notes or []  # what building the model decided for the user to read (a fresh head...)


def prepare(config: ExperimentConfig, model: torch.nn.Module | None = None) -> Prepared:
    """Load data, pick the task, build the model: everything that can fail on bad input."""
    seed_everything(config.train.seed)
    return prepare_bundle(config, load_data(config.data, config.task), model)


def prepare_bundle(config: ExperimentConfig, bundle: DataBundle, model: torch.nn.Module | None = None,
                   initialise: bool = True) -> Prepared:
    """Pick the task and build the model for data already loaded (cross-validation folds too).

    ``initialise``: load ``model.init_from``'s weights (a resume takes its checkpoint's instead)."""
    config = with_family(config, bundle.spec, len(bundle.train))  # a table without a model section: the recipe's family
    family_cls = FAMILIES.get(config.model.family)
    task_name = config.task or infer_task(bundle.spec, family_cls, SOURCES.get(config.data.source))
    task_cls = TASKS.get(task_name)
    if task_cls.target is not None and task_cls.target != bundle.spec.target:
        raise ConfigError(f"task: '{task_name}' needs a {task_cls.target} target, but {config.data.source} data "
                          f"gives a {bundle.spec.target} target; change task or the data")
    options = resolve_task_options(config, task_cls, bundle.spec)
    config = apply_recipe(config, bundle.spec, len(bundle.train), task_name)  # tabular: sized by the table
    config = config.model_copy(update={"task": task_name, "task_options": options,
                                       "model": with_defaults(config.model, task_cls.model_defaults, "model")})
    task = task_cls(bundle.spec, config.train, bundle.preprocessor, bundle.train.y, config=options)
    seed_everything(config.train.seed)  # weights do not depend on how much randomness loading used
    net = wrap_module(model, bundle.spec) if model is not None else build_model(config.model, bundle.spec)
    if model is not None:
        config = config.model_copy(update={"model": net.config})
    notes = []
    if config.model.init_from and initialise:
        from ..models.transfer import load_initial_weights

        notes += load_initial_weights(net, config.model.init_from)
    if config.train.freeze:
        from ..models.transfer import freeze

        notes.append(f"frozen: {freeze(net, config.train.freeze)} parameter tensors ({', '.join(config.train.freeze)})")
    task.check_model(net)
    _check_monitors(config, task)
    # refuses what it cannot attack
    task = adversarial_task(task, getattr(options, "adversarial_training", None), bundle)
    return Prepared(config, bundle, task, net, notes)


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
    # SIGTERM outside the loop acts like Ctrl-C (raise and clean up); inside it, the loop stops at a
    # step boundary with a checkpoint. The lock is released last, after any cleanup.
    with StopSignals(defer=False), contextlib.ExitStack() as held:
        if resume is not None:
            run_dir = Path(resume)
            if not (run_dir / "config.yaml").is_file():
                raise RunError(f"--resume: {run_dir} is not a run directory (no config.yaml)")
            held.enter_context(RunLock(run_dir).acquire())  # a second writer is refused before anything is read
            saved = Run(run_dir).config  # a damaged config.yaml or data.json is refused before training, not after
            cfg = load_config(saved, extra or None)  # the saved config, read once, with this resume's overrides
            check_model_code(cfg.model, run_dir, trust_code)  # a resumed python-family run imports its file again
            changes = resume_changes(saved, cfg)  # refuses what a resume cannot honour, in one line
            checkpoint = run_dir / "checkpoints" / "last.pt"
            if not checkpoint.is_file():
                raise RunError(f"--resume: {checkpoint} not found: the run stopped before its first checkpoint; "
                               f"start the experiment again instead")
        else:
            cfg = load_config(config, extra or None)
            checkpoint = None
        seed_everything(cfg.train.seed)
        bundle = load_data(cfg.data, cfg.task)
        # a table without a model section: the family is chosen on the validation split (selection.py)
        families = candidates(cfg, bundle.spec, len(bundle.train)) if resume is None and model is None else ()
        loaded = cfg  # as written: each candidate family gets its own recipe from it
        prepared = prepare_bundle(named_family(cfg, families[0]) if families else cfg, bundle, model,
                                  initialise=resume is None)
        cfg, task, net = prepared.config, prepared.task, prepared.model
        device = resolve_device(cfg.train.device)
        train_loader, val_loader = loaders(bundle, cfg, device)
        energy = None if cfg.train.energy == "off" else EnergyCallback(device, cfg.train.energy, cfg.train.energy_country)

        if resume is None:
            weight = getattr(task, "weight", None)  # resolved 'balanced' class weights: the loss needs them later
            data = {"spec": bundle.spec.to_dict(), "preprocessing": bundle.preprocessor.to_dict(),
                    "class_weight": None if weight is None else weight.tolist()}
            run_dir, lock = create_run_dir(Path(runs_dir), cfg.name, {
                "config.yaml": lambda tmp: Path(tmp).write_text(cfg.to_yaml()),
                "data.json": lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=_json_default))})
            held.enter_context(lock)
            if model is not None and cfg.model.family == "python":
                console.print(f"[dim]user module {cfg.model.target}: load_run needs it importable to rebuild[/dim]")

        def loop_callbacks(cfg: ExperimentConfig, task, files: bool) -> list[Callback]:
            """The fit's callbacks; ``files``: with the two that write into the run (history, checkpoints)."""
            cbs: list[Callback] = [ProgressBar(console) if cfg.train.progress and not quiet else Callback(),
                                   EpochPrinter(console) if not quiet else Callback(),
                                   HistoryCSV(run_dir / "history.csv") if files else Callback()]
            if cfg.train.early_stopping is not None:
                cbs.insert(0, EarlyStopping.from_config(cfg.train.early_stopping))
            cbs += task.callbacks(run_dir) + list(callbacks)
            if energy is not None:
                cbs.append(energy)
            # last: a checkpoint holds what every other callback did for its step or epoch (the diffusion
            # task's EMA update of the step, early stopping's count, the energy meter), so a resume is exact
            kept = cfg.train.checkpoints
            cbs.append(Checkpoint(run_dir / "checkpoints", cfg.train.checkpoint_every, keep_last=kept.keep_last,
                                  keep_best=kept.keep_best, monitor=kept.monitor) if files else Callback())
            return cbs

        cbs = loop_callbacks(cfg, task, files=True)
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
        family = f"{' or '.join(families)} (chosen on validation)" if families else cfg.model.family
        console.print(f"[bold]{cfg.name}[/bold]: {family} on {bundle.spec.kind} data "
                      f"({len(bundle.train)} train / {len(bundle.val) if bundle.val else 0} val / "
                      f"{len(bundle.test) if bundle.test else 0} test), task {cfg.task}, device {device}", highlight=False)
        console.print(f"run directory: {run_dir}", highlight=False)
        for note in prepared.notes:
            console.print(note, highlight=False)
        if resume is None and applies(cfg, bundle.spec, cfg.task) and not families:
            console.print(describe_recipe(cfg, len(bundle.train)), highlight=False)
        try:
            if families:
                return _select_and_finish(run_dir, loaded, bundle, families, strategy, device, energy, loop_callbacks,
                                          console)
            return _fit_and_finish(run_dir, cfg, bundle, task, net, trainer, strategy, train_loader, val_loader,
                                   device, energy, selection=None if resume is None else _earlier_selection(run_dir))
        except BaseException as exc:
            error = _after_failure(exc, run_dir, fresh=resume is None)
            if error is exc:
                raise
            raise error from exc


def _fit_and_finish(run_dir, cfg, bundle, task, net, trainer, strategy, train_loader, val_loader, device,
                    energy, selection: dict[str, Any] | None = None) -> "Run":
    """Fit, then write the model, the metrics and the report: the run is complete."""
    started = time.perf_counter()
    strategy.fit(trainer, train_loader, val_loader)
    return _finish(run_dir, cfg, bundle, task, net, trainer, device, energy, time.perf_counter() - started,
                   selection=selection)


def _earlier_selection(run_dir: Path) -> dict[str, Any] | None:
    """A resumed run keeps the record of how its family was chosen (metrics.json is rewritten)."""
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("selection")
    except (OSError, ValueError, AttributeError):
        return None  # no metrics yet, or damaged: the resume writes new ones without the record


def _select_and_finish(run_dir, base: ExperimentConfig, bundle, families, strategy, device, energy, loop_callbacks,
                       console) -> "Run":
    """Fit every candidate family in memory, make the one with the lowest validation loss the run
    (its config, history and checkpoint written as a single fit's), then finish as any run."""
    console.print(f"recipe {base.recipe} for {len(bundle.train):,} training rows: the family is chosen on the "
                  f"validation loss among {', '.join(families)}", highlight=False)

    def fit(family: str) -> Candidate:
        prepared = prepare_bundle(named_family(base, family), bundle)
        console.print(describe_recipe(prepared.config, len(bundle.train)), highlight=False)
        train_loader, val_loader = loaders(bundle, prepared.config, device)
        trainer = Trainer(prepared.model, prepared.task, prepared.config.train, device=device,
                          callbacks=loop_callbacks(prepared.config, prepared.task, files=False),
                          eval_cfg=prepared.config.evaluate)
        strategy.fit(trainer, train_loader, val_loader)
        if energy is not None:  # the next candidate's session adds to this total: the run's energy is all of them
            energy.previous = energy.result
        return Candidate(family, (prepared, trainer), list(trainer.history), 0.0,
                         sum(p.numel() for p in prepared.model.parameters()), trainer.restored_epoch)

    started = time.perf_counter()
    winner, selection = choose(families, fit, lambda line: console.print(line, highlight=False))
    duration = time.perf_counter() - started
    prepared, trainer = winner.fitted
    cfg = prepared.config
    atomic_write(run_dir / "config.yaml", lambda tmp: Path(tmp).write_text(cfg.to_yaml()))
    # the winner's fit becomes the run's: history.csv and a checkpoint holding every callback's state
    # (early stopping's count included), written by the two callbacks its fit ran without
    writers = loop_callbacks(cfg, prepared.task, files=True)
    trainer.callbacks = [new if isinstance(new, (HistoryCSV, Checkpoint)) else old
                         for old, new in zip(trainer.callbacks, writers, strict=True)]
    for callback in trainer.callbacks:
        if isinstance(callback, (HistoryCSV, Checkpoint)):
            callback.on_epoch_end(trainer, trainer.history[-1] if trainer.history else {})
            callback.on_fit_end(trainer)
    return _finish(run_dir, cfg, bundle, prepared.task, prepared.model, trainer, device, energy, duration,
                   selection=selection)


def _finish(run_dir, cfg, bundle, task, net, trainer, device, energy, duration: float,
            selection: dict[str, Any] | None = None) -> "Run":
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
    if selection is not None:
        metrics["selection"] = selection
    adversarial = getattr(cfg.task_options, "adversarial_training", None)
    if adversarial is not None and adversarial.eval_samples:
        metrics["robustness"] = task.robustness(net, bundle.split(split), split, device)  # clean vs robust accuracy
    from .baselines import fit_baselines

    baselines = fit_baselines(run, bundle, split)  # tabular runs: linear model and boosted trees, scored alike
    if baselines is not None:
        metrics["baselines"] = baselines
    _write_json(run_dir / "metrics.json", metrics)
    run.report()
    return run


def _after_failure(exc: BaseException, run_dir: Path, fresh: bool) -> BaseException:
    """After training failed or was stopped: remove a new run that has no checkpoint (it could neither
    be resumed nor used), and return the error to raise, its advice agreeing with what is left."""
    resumable = (run_dir / "checkpoints" / "last.pt").is_file()
    removed = fresh and not resumable
    if removed:
        shutil.rmtree(run_dir, ignore_errors=True)
    if isinstance(exc, KeyboardInterrupt):
        what = str(exc) or "interrupted"
        if resumable:
            advice = f"the checkpoint is saved: continue with `layerwise train --resume {run_dir}`"
        else:
            advice = f"nothing was kept ({run_dir} removed before its first checkpoint): start the experiment again"
        return TrainingInterrupted(f"{what}; {advice}", getattr(exc, "signum", signal.SIGINT))
    if isinstance(exc, DiskFullError):
        if removed:
            return DiskFullError(exc.problem, f"nothing was kept ({run_dir} removed before its first checkpoint): "
                                              f"free some space and start the experiment again")
        return DiskFullError(exc.problem, f"the last checkpoint is intact: free some space, then continue with "
                                          f"`layerwise train --resume {run_dir}`")
    return exc
