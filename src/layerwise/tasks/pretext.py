"""What the self-supervised tasks share (``contrastive``, ``masked_autoencoder``, ``masked_lm``): the
seed of a training batch's random views or masks, the size of a model's features, the one-line
refusal to predict, and the streaming mean their evaluations report.

Each of those tasks trains a ``pretext`` module beside the model (:meth:`Task.extend_model`): a
projection head, a decoder or a token head, sized from the model's features.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ConfigError
from ..data.loader import batch_seed

__all__ = ["view_seed", "feature_size", "predict_error", "MeanEvaluator", "EVAL_SEED"]

EVAL_SEED = 0  # evaluation views and masks: the same every time, so losses compare across epochs


def view_seed(train_cfg, ctx) -> int:
    """A training batch's seed for its views or masks: a pure function of the run's seed, the epoch and
    the batch, so a resumed run draws what it would have drawn."""
    # offset from the loader's augmentation seed of the same batch, so the two draw different streams
    return batch_seed(train_cfg.seed, ctx.trainer.epoch, ctx.trainer.batch_in_epoch) + 7


@torch.no_grad()
def feature_size(model: nn.Module) -> int:
    """The size of ``forward_features`` (the head's input for the model contract, else one probe batch)."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head.in_features
    return int(model.forward_features(model.spec.example_input(2)).flatten(1).shape[1])


def predict_error(task: str) -> ConfigError:
    return ConfigError(f"task {task}: a pretraining run predicts no labels; fine-tune it on labelled data "
                       f"(model.init_from: RUN_DIR), measure its features (`layerwise probe RUN`) or embed inputs "
                       f"(`layerwise embed RUN INPUT`)")


class MeanEvaluator:
    """Streams the mean of the values evaluation steps return (a view's hit, a sample's masked loss, a
    hidden token's hit): memory does not grow with the data."""

    def __init__(self, metric: str, unit: str):
        self.metric, self.unit = metric, unit
        self.total, self.count = 0.0, 0

    def update(self, outputs: torch.Tensor, y=None, x=None) -> None:
        self.total += float(outputs.float().sum())
        self.count += outputs.numel()

    def compute(self, class_names=None):
        from .evaluation import EvalResult

        return EvalResult({self.metric: self.total / max(self.count, 1)}, {self.unit: self.count})
