"""Recipes: what a tabular experiment means when the config names only the family, or nothing.

Published tabular deep learning agrees that a network's defaults decide whether it matches
gradient-boosted trees (Holzmüller et al. 2024, "Better by Default"; Gorishniy et al. 2021, 2022,
2024): the width and depth, dropout and weight decay, the numeric embedding, the batch size for the
table's size, and above all the number of epochs, chosen on a validation split rather than fixed.
A recipe fills every model and training field the config leaves unset from the table (its training
rows) and the task; what the user wrote always wins, and the values chosen are written to the run's
``config.yaml`` (and printed by ``layerwise config CONFIG --data``), so a run says what it did.

Three recipes trade time for accuracy (``recipe:`` in the config):

- ``fast``: a small MLP, few epochs; a first look in seconds.
- ``default``: the family's published defaults, early stopping on the validation loss; with no
  family named, the MLP and TabM are both fitted and the lower validation loss wins
  (``selection.py``) up to :data:`TABM_MAX_ROWS` training rows, the MLP alone beyond (time).
- ``best``: wider layers and more patience; with no family named, the same choice at any size.

Early stopping watches the validation loss, not accuracy: on the suite's small tables a validation
split of 30 to 150 rows ties in accuracy for many epochs, and the first of the ties (often the 3rd
epoch) is an undertrained net (penguins: 94.2 by accuracy, 97.1 by loss).

The numbers are constants below, measured with ``benchmarks/tabular_suite.py`` (docs/tabular.md has
the table). A recipe applies to tabular data and the families written for it; other runs keep the
schema's defaults.
"""

from __future__ import annotations

from typing import Any

from ..core.config import ExperimentConfig, validate_section, with_defaults
from ..core.errors import ConfigError
from ..data.spec import DataSpec
from ..models import FAMILIES

__all__ = ["RECIPES", "TABULAR_FAMILIES", "TABM_MAX_ROWS", "with_family", "named_family", "apply_recipe",
           "describe_recipe"]

RECIPES = ("fast", "default", "best")
TABULAR_FAMILIES = ("mlp", "resmlp", "ft_transformer", "tabm")  # the families a recipe knows how to size

# the family of a tabular run whose config has no model section, where nothing is chosen on the
# validation split (recipe fast; tools that prepare one model, such as cv and `config --data`)
DEFAULT_FAMILY = {"fast": "mlp", "default": "tabm", "best": "tabm"}
# recipe default: TabM's 32 members cost ~10x the MLP's time per epoch on a CPU; beyond this many
# training rows the default takes the MLP (43,000-row diamonds: the MLP 38 s, 98.0 R^2; TabM not run there)
TABM_MAX_ROWS = 20_000

# recipes default and best: a bag of BAGS members, each fitted on its own folds (runs/bagging.py), for
# tables of up to this many training rows, where a validation fold of 200 rows or fewer makes one
# network's early stopping noisy and five fits take seconds (sacramento, 596 training rows: one MLP
# 61.9 R^2 against ridge's 64.1; docs/tabular.md has the suite's figures)
BAG_MAX_ROWS = 1_000
BAGS = 5

# model fields by family and recipe; a family's own schema defaults fill the rest
MODEL = {
    "mlp": {
        "fast": {"hidden": [128, 128], "dropout": 0.1},
        # periodic numeric embeddings (MLP-PLR, Gorishniy et al. 2022): +0.9 to +4.4 points on
        # attrition, concrete, hpc and churn against the plain MLP (benchmarks/tabular_suite.py)
        "default": {"hidden": [256, 256, 256], "dropout": 0.15, "numeric_embedding": "periodic"},
        "best": {"hidden": [512, 512, 512], "dropout": 0.15, "numeric_embedding": "periodic"},
    },
    "resmlp": {
        "fast": {"width": 128, "blocks": 2},
        "default": {},
        "best": {"width": 384, "blocks": 4},
    },
    "ft_transformer": {
        "fast": {"d_token": 64, "blocks": 2},
        "default": {},
        "best": {"numeric_embedding": "periodic"},
    },
    "tabm": {
        "fast": {"k": 8, "width": 256},
        "default": {},
        "best": {},
    },
}

# optimizer settings by family (AdamW): the learning rate and decoupled weight decay of each paper
OPTIMIZER = {
    "mlp": {"lr": 1e-3, "weight_decay": 1e-4},
    "resmlp": {"lr": 1e-3, "weight_decay": 1e-4},
    "ft_transformer": {"lr": 1e-4, "weight_decay": 1e-5},
    "tabm": {"lr": 2e-3, "weight_decay": 3e-4},
}

# the most epochs, and the patience of early stopping on the validation loss
EPOCHS = {"fast": (30, 5), "default": (200, 16), "best": (400, 24)}
NO_VALIDATION_EPOCHS = {"fast": 20, "default": 60, "best": 100}  # data.val_fraction 0: nothing to stop on


def batch_size(rows: int) -> int:
    """Samples per step from the training rows: small tables take small batches (enough steps per
    epoch for early stopping to see progress), large ones large batches (time)."""
    for limit, size in ((1_000, 32), (3_000, 64), (10_000, 128), (50_000, 256)):
        if rows < limit:
            return size
    return 512


def applies(config: ExperimentConfig, spec: DataSpec, task: str) -> bool:
    """A recipe sizes tabular classification and regression with a tabular family."""
    return (spec.kind == "tabular" and task in ("classification", "regression")
            and config.model.family in TABULAR_FAMILIES)


def with_family(config: ExperimentConfig, spec: DataSpec, rows: int) -> ExperimentConfig:
    """A tabular config without a model section gets the recipe's family for ``rows`` training rows
    (the schema's default family, a CNN, takes images)."""
    if spec.kind != "tabular" or "family" in config.model.model_fields_set:
        return config
    family = DEFAULT_FAMILY[config.recipe]
    if config.recipe == "default" and rows > TABM_MAX_ROWS:
        family = "mlp"
    return named_family(config, family)


def named_family(config: ExperimentConfig, family: str, single: bool = False) -> ExperimentConfig:
    """``config`` with ``model: {family: FAMILY}`` as if the user had written it (the recipe sizes the
    rest); ``single``: one network, not a bag (a candidate of the family selection)."""
    section = {**config.model.model_dump(include=config.model.model_fields_set), "family": family}
    if single:
        section["bags"] = 1
    return config.model_copy(update={"model": validate_section(FAMILIES.get(family).Config, section, "model")})


def apply_recipe(config: ExperimentConfig, spec: DataSpec, rows: int, task: str, one_network: bool = False
                 ) -> ExperimentConfig:
    """``config`` with the recipe's values in every model and train field it leaves unset;
    ``one_network``: never a bag (a module passed to ``train()`` is one network).

    ``recipe:`` set on data no recipe applies to is refused rather than ignored."""
    recipe = config.recipe
    if not applies(config, spec, task):
        if "recipe" in config.model_fields_set and recipe != "default":
            raise ConfigError(f"recipe: '{recipe}' sizes tabular classification and regression with "
                              f"{', '.join(TABULAR_FAMILIES)}; this run is {config.model.family} on {spec.kind} "
                              f"data ({task}): remove the key")
        return config
    family = config.model.family
    model = with_defaults(config.model, {**MODEL[family][recipe], "bags": 1 if one_network else bags(config, rows)}, "model")
    train = with_defaults(config.train, train_defaults(config, family, rows), "train")
    return config.model_copy(update={"model": model, "train": train})


def bags(config: ExperimentConfig, rows: int) -> int:
    """Members of the recipe's bag for ``rows`` training rows: 1 (a single fit) but on small tables,
    where the recipe stops each member early. A config that sets ``train.epochs`` (or a step or time
    budget) asks for that much training, not five times it; one without a validation split has no
    early stopping to vary."""
    small = config.recipe in ("default", "best") and rows <= BAG_MAX_ROWS
    budget = {"epochs", "max_steps", "max_time"} & config.train.model_fields_set
    stopped_early = not budget and config.data.val_fraction > 0
    return BAGS if small and stopped_early and config.train.strategy == "local" else 1


def train_defaults(config: ExperimentConfig, family: str, rows: int) -> dict[str, Any]:
    recipe = config.recipe
    out: dict[str, Any] = {"batch_size": batch_size(rows), "scheduler": "none"}
    if "optimizer" not in config.train.model_fields_set:  # the recipe's settings are AdamW's, not another's
        out.update(optimizer="adamw", **OPTIMIZER[family])
    if "epochs" in config.train.model_fields_set:
        pass  # the user's number of epochs, not stopped early (unless they ask for early stopping)
    elif config.data.val_fraction > 0:
        epochs, patience = EPOCHS[recipe]
        out.update(epochs=epochs, early_stopping={"monitor": "val_loss", "patience": patience, "restore_best": True})
    else:
        out["epochs"] = NO_VALIDATION_EPOCHS[recipe]
    return out


def describe_recipe(config: ExperimentConfig, rows: int) -> str:
    """One line for the console: what the recipe chose."""
    train = config.train
    stop = (f"up to {train.epochs} epochs, early stopping on {train.early_stopping.monitor} "
            f"(patience {train.early_stopping.patience})" if train.early_stopping else f"{train.epochs} epochs")
    bag = f" (a bag of {config.model.bags}, each on its own folds)" if config.model.bags > 1 else ""
    return (f"recipe {config.recipe} for {rows:,} training rows: {config.model.family}{bag}, {train.optimizer} "
            f"lr {train.lr:g}, batch {train.batch_size}, {stop}")
