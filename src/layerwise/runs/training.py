"""Training an experiment into a run directory: :func:`train`, and the steps it shares with tools.

``prepare`` (``prepare.py``) validates the config and builds data, task and model before any file
is written; ``train`` creates the run directory atomically and locked (``rundir.py``), fits with the
one loop (or fits the candidate families and keeps one, ``selection.py``; or fits a bag's members
one by one, ``bagging.py``), then writes the weights, the metrics and the report. A failure or an
interrupt before the first checkpoint removes the directory; after it, the message says how to
``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from ..core import __version__
from ..core.config import ExperimentConfig
from ..core.device import resolve_device
from ..core.errors import ConfigError, DiskFullError, RunError, TrainingInterrupted
from ..core.io import atomic_write
from ..data import DataBundle, load_data
from ..data.spec import DataSpec
from ..models import LayerwiseModel
from ..train import Callback, Checkpoint, EarlyStopping, EpochPrinter, HistoryCSV, ProgressBar, Trainer, seed_everything
from ..train.energy import EnergyCallback
from ..train.interrupt import StopSignals
from ..train.strategies import STRATEGIES
from .bagging import BagState, fit_bag, read_bag_checkpoint, rows_to_fold
from .config import load_config
from .prepare import Prepared, loaders, prepare, prepare_bundle
from .recipes import applies, describe_recipe, named_family
from .resume import RecordResume, resume_changes
from .run import Run, merged_for_inference
from .selection import Candidate, candidates, choose
from .rundir import RunLock, create_run_dir
from .trust import check_model_code

__all__ = ["train", "prepare", "prepare_bundle", "loaders", "save_model", "fit_bag_members"]


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
            bag_state = read_bag_checkpoint(checkpoint)
            if bag_state is not None and changes:
                key = next(iter(changes))
                raise ConfigError(f"--resume: {key} cannot change when a bag resumes: its fitted members were "
                                  f"made with the old value; resume without it, or start a new run")
        else:
            cfg = load_config(config, extra or None)
            checkpoint = bag_state = None
        seed_everything(cfg.train.seed)
        bundle = load_data(cfg.data, cfg.task)
        # a table without a model section: the family is chosen on the validation split (selection.py)
        families = candidates(cfg, bundle.spec, len(bundle.train)) if resume is None and model is None else ()
        loaded = cfg  # as written: each candidate family gets its own recipe from it
        prepared = prepare_bundle(named_family(cfg, families[0], single=True) if families else cfg, bundle, model,
                                  initialise=resume is None)
        cfg, task, net = prepared.config, prepared.task, prepared.model
        device = resolve_device(cfg.train.device)
        train_loader, val_loader = loaders(bundle, cfg, device, task)
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
        trainer = None  # a selection's candidates and a bag's members each get their own
        if not families and cfg.model.bags == 1:
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
            if cfg.model.bags > 1:
                return _bag_and_finish(run_dir, prepared, bag_state or BagState(cfg.model.bags), strategy, device,
                                       energy, loop_callbacks, console)
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
        prepared = prepare_bundle(named_family(base, family, single=True), bundle)
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
    bag = prepare_bundle(named_family(base, winner.family), bundle)  # the recipe may bag the chosen family
    if bag.config.model.bags > 1:
        console.print(describe_recipe(bag.config, len(bundle.train)), highlight=False)
        atomic_write(run_dir / "config.yaml", lambda tmp: Path(tmp).write_text(bag.config.to_yaml()))
        return _bag_and_finish(run_dir, bag, BagState(bag.config.model.bags, selection=selection), strategy, device,
                               energy, loop_callbacks, console)
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


def _bag_and_finish(run_dir, prepared: Prepared, state: BagState, strategy, device, energy, loop_callbacks,
                    console) -> "Run":
    """Fit the members of a bag each on its own folds (``bagging.py``), each saved to the checkpoint
    as it ends, then finish as any run."""
    if energy is not None and state.energy:
        energy.previous = state.energy  # a resumed bag: the members fitted before count

    def fit(trainer: Trainer, train_loader, val_loader) -> None:
        strategy.fit(trainer, train_loader, val_loader)
        if energy is not None:  # the next member's session adds to this total
            energy.previous = state.energy = energy.result

    record, rows = fit_bag_members(prepared, state, device, lambda cfg, task: loop_callbacks(cfg, task, files=False),
                                   fit, run_dir / "checkpoints" / "last.pt",
                                   lambda line: console.print(line, highlight=False))
    records = state.records
    choosing = sum(c["seconds"] for c in (state.selection or {}).get("candidates", []))  # the family's choice first
    training = {"duration_s": choosing + sum(r["seconds"] for r in records),
                "epochs_run": sum(r["epochs_run"] for r in records),
                "steps": sum(r["steps"] for r in records), "stop_reason": "completed", "restored_best_epoch": None}
    return _finish(run_dir, prepared.config, prepared.bundle, prepared.task, prepared.model, None, device, energy,
                   training["duration_s"], selection=state.selection, bagging=record, training=training,
                   fitted_on=None if rows is prepared.bundle else rows)


def fit_bag_members(prepared: Prepared, state: BagState, device: torch.device,
                    callbacks: Callable[[ExperimentConfig, Any], list[Callback]],
                    fit: Callable[[Trainer, Any, Any], None], checkpoint: Path | None,
                    say: Callable[[str], None]) -> tuple[dict[str, Any], DataBundle]:
    """Fit the members of ``prepared``'s bag that ``state`` lacks, each on its own folds of every row the
    run is not scored on, and load them all into ``prepared.model``. Returns the ``bagging`` record of
    metrics.json and those rows (``train`` and ``cv`` share it: a bag means the same in both)."""
    cfg = prepared.config
    rows = rows_to_fold(prepared.bundle, _scored_split(cfg, prepared.bundle))
    member_model = cfg.model.model_copy(update={"bags": 1})

    def fit_member(i: int, data: DataBundle) -> tuple[torch.nn.Module, Trainer]:
        train_cfg = cfg.train.model_copy(update={"seed": cfg.train.seed + i})  # members differ by their start too
        member = prepare_bundle(cfg.model_copy(update={"model": member_model, "train": train_cfg}), data)
        train_loader, val_loader = loaders(data, member.config, device)
        trainer = Trainer(member.model, member.task, member.config.train, device=device,
                          callbacks=callbacks(member.config, member.task), eval_cfg=cfg.evaluate)
        fit(trainer, train_loader, val_loader)
        return member.model, trainer

    record = fit_bag(state, rows, cfg.data.split_seed, rows.spec.target == "class", fit_member, checkpoint, say)
    for member, weights in zip(prepared.model.bag, state.weights, strict=True):
        member.load_state_dict(weights)
    return record, rows


def _finish(run_dir, cfg, bundle, task, net, trainer, device, energy, duration: float,
            selection: dict[str, Any] | None = None, bagging: dict[str, Any] | None = None,
            training: dict[str, Any] | None = None, fitted_on: DataBundle | None = None) -> "Run":
    """Write the model, metrics.json and the report. ``training``: what the fit did, when no single
    trainer did it (a bag); ``fitted_on``: the rows the network learnt from, when they are not
    ``bundle.train`` (a bag's), for the baselines to learn from the same."""
    save_model(run_dir / "model.safetensors", net, cfg, bundle.spec)
    run = Run(run_dir)
    run._model = merged_for_inference(net)  # after saving: model.safetensors keeps LoRA's adapters apart
    run._data = bundle  # the report reuses it rather than reading the data again
    split = _scored_split(cfg, bundle)
    result = run._evaluate_split(bundle, split, device)
    if training is None:
        training = {"duration_s": duration, "epochs_run": trainer.epoch, "steps": trainer.global_step,
                    "stop_reason": trainer.stop_reason or "completed", "restored_best_epoch": trainer.restored_epoch,
                    "resumes": trainer.resumes}
    training = {**training, "device": str(device), "parameters": sum(p.numel() for p in net.parameters()),
                "layerwise_version": __version__, "torch_version": torch.__version__}
    metrics = {"split": split, "metrics": dict(result), "details": result.details, "training": training,
               "energy": None if energy is None else energy.result}
    if selection is not None:
        metrics["selection"] = selection
    if bagging is not None:
        metrics["bagging"] = bagging
    adversarial = getattr(cfg.task_options, "adversarial_training", None)
    if adversarial is not None and adversarial.eval_samples:
        metrics["robustness"] = task.robustness(net, bundle.split(split), split, device)  # clean vs robust accuracy
    from .baselines import fit_baselines

    baselines = fit_baselines(run, fitted_on or bundle, split, "training split" if fitted_on is None
                              else "training and validation splits (a bag's rows)")  # tabular runs: linear model and boosted trees, scored alike
    if baselines is not None:
        metrics["baselines"] = baselines
    _write_json(run_dir / "metrics.json", metrics)
    run.report()
    return run


def _scored_split(cfg: ExperimentConfig, bundle: DataBundle) -> str:
    """The split a finished run is scored on: ``evaluate.split``, or validation when that split is absent."""
    return cfg.evaluate.split if getattr(bundle, cfg.evaluate.split) is not None else "val"


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
