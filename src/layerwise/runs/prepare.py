"""Preparing an experiment: validate its config, then build data, task and model, before any file is written.

Everything that can fail on bad input fails here, in one line, before ``train`` creates a run
directory: the task must fit the data's target, the recipe sizes a table's model and training
(``recipes.py``), a bag must be of classifiers or regressors (``bagging.py``), a watched metric
must be logged. ``prepare_bundle`` is shared by ``train``, the family selection, a bag's members
and ``layerwise cv``'s folds.
"""

from __future__ import annotations

import torch

from ..core.config import ExperimentConfig, with_defaults
from ..core.errors import ConfigError
from ..data import SOURCES, DataBundle, load_data
from ..data.loader import BatchLoader
from ..models import FAMILIES, LayerwiseModel, build_model, wrap_module
from ..tasks import TASKS, infer_task
from ..train import seed_everything
from ..train.adversarial import adversarial_task
from .config import resolve_task_options
from .recipes import apply_recipe, with_family

__all__ = ["Prepared", "prepare", "prepare_bundle", "loaders"]


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
    config = apply_recipe(config, bundle.spec, len(bundle.train), task_name, one_network=model is not None)  # tabular: sized by the table
    config = config.model_copy(update={"task": task_name, "task_options": options,
                                       "model": with_defaults(config.model, task_cls.model_defaults, "model")})
    if config.model.bags > 1:
        _check_bag(config, task_name, model)
    task = task_cls(bundle.spec, config.train, bundle.preprocessor, bundle.train.y, config=options)
    seed_everything(config.train.seed)  # weights do not depend on how much randomness loading used
    net = wrap_module(model, bundle.spec) if model is not None else build_model(config.model, bundle.spec)
    if model is not None:
        config = config.model_copy(update={"model": net.config})
    notes = []
    # a bag's members each start from init_from and freeze the same layers (patterns name a member's layers)
    networks = list(net.bag) if config.model.bags > 1 else [net]
    if config.model.init_from and initialise:
        from ..models.transfer import load_initial_weights

        for i, network in enumerate(networks):
            said = load_initial_weights(network, config.model.init_from)
            notes += said if i == 0 else []  # the members say the same
    if config.model.lora is not None:  # LoRA: the adapters and the head train, the rest stays as loaded
        from ..models.lora import train_only_adapters

        trainable, total = train_only_adapters(net)
        notes.append(f"LoRA: {trainable:,} of {total:,} parameters train (the adapters and the head)")
    if config.train.freeze:
        from ..models.transfer import freeze

        frozen = sum(freeze(network, config.train.freeze) for network in networks)
        notes.append(f"frozen: {frozen} parameter tensors ({', '.join(config.train.freeze)})")
    if config.train.layer_lr_scale and config.model.bags > 1:  # a single network's are checked by its optimizer
        from ..models.transfer import parameters_matching

        parameters_matching(networks[0], config.train.layer_lr_scale, "train.layer_lr_scale")
    task.check_model(net)
    task.extend_model(net)
    _check_monitors(config, task)
    # refuses what it cannot attack
    task = adversarial_task(task, getattr(options, "adversarial_training", None), bundle)
    return Prepared(config, bundle, task, net, notes)


def _check_bag(config: ExperimentConfig, task: str, model: torch.nn.Module | None) -> None:
    """A bag averages classifiers or regressors, fitted one after another in this process."""
    if task not in ("classification", "regression"):
        raise ConfigError(f"model.bags: a bag averages classifiers or regressors; this run's task is {task}: "
                          f"remove model.bags")
    if config.train.strategy != "local":
        raise ConfigError(f"model.bags: the members are fitted one after another in this process; train.strategy "
                          f"is {config.train.strategy}: remove model.bags, or train with strategy local")
    if model is not None:
        raise ConfigError("model.bags: a bag builds its members from model.family; a module passed to train() "
                          "is one network: remove model.bags")


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


def loaders(bundle: DataBundle, cfg: ExperimentConfig, device: torch.device, task=None):
    """Training loader (shuffled, augmented, maybe weighted) and a validation loader; ``task``'s own
    when it draws batches its own way (:meth:`Task.loader`: a few-shot task's episodes)."""
    transform = bundle.preprocessor.inputs.batch
    has_val = bundle.val is not None and len(bundle.val)
    train = task.loader(bundle.train, "train", cfg, transform, device) if task is not None else None
    val = task.loader(bundle.val, "val", cfg, transform, device) if task is not None and has_val else None
    if train is None:
        weights = None
        if cfg.data.sampler == "weighted":
            if bundle.spec.target != "class":
                raise ConfigError("data.sampler: 'weighted' needs class labels; use 'random' for regression")
            counts = torch.bincount(bundle.train.y, minlength=bundle.spec.num_classes).float().clamp_(min=1)
            weights = (1.0 / counts)[bundle.train.y]
        train = BatchLoader(bundle.train, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed,
                            transform=transform, train=True, weights=weights, device=device)
    if val is None and has_val:
        val = BatchLoader(bundle.val, cfg.evaluate.batch_size, transform=transform, device=device)
    return train, val
