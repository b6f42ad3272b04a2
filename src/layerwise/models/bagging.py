"""A bag (Breiman 1996, "Bagging predictors"): K members of one family whose predictions are averaged.

A network fitted on a few hundred rows depends on the rows it drew and on the epoch early stopping
kept; averaging members fitted on different rows cancels much of that variance. ``model.bags: K``
builds K members of the configured family; ``runs/bagging.py`` fits each on its own K-1 folds of the
training rows with early stopping on the fold left out (cross-fitting, as in AutoGluon-Tabular's
k-fold bagging, Erickson et al. 2020), and this module is the one model they form.

A bag obeys the model contract like any family, so explain, compress, export and serve take it as
it is: its features are the members' features side by side, its head hands each member its share,
and it is an ensemble in the sense of :mod:`layerwise.models`: in eval mode it returns (B, outputs),
the members combined by :func:`~layerwise.models.combine_members` (the mean probability, or the mean
value); in training mode (a fine-tuning or a ``layerwise cv`` fold trains the members together)
(B, members, outputs), each member trained on its own loss. A member that is itself an ensemble
(TabM's k) contributes its k rows in training and its combined prediction in eval.
"""

from __future__ import annotations

import torch
from torch import nn

from . import LayerwiseModel, combine_members

__all__ = ["Bag", "BagHead"]


class BagHead(nn.Module):
    """The bag's output layer: the members' features (B, sum of widths) -> each member's head.

    It owns no weights (each member keeps its own head, so a member's state stays its own); it is a
    module so that hooks on ``model.head`` (penultimate features, pruning's ignored layers) see the
    features every member's head reads."""

    def __init__(self, members: list[LayerwiseModel]):
        super().__init__()
        self.__dict__["_members"] = tuple(members)  # not registered: the members own their heads
        self.widths = [m.num_features for m in members]
        self.in_features = sum(self.widths)
        self.out_features = getattr(members[0].head, "out_features", members[0].spec.num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        outputs = [m.forward_head(part) for m, part in zip(self._members, features.split(self.widths, dim=1))]
        if self.training:  # each member's rows side by side: (B, members, outputs), one row per (sub)member
            return torch.cat([o.reshape(o.shape[0], -1, self.out_features) for o in outputs], dim=1)
        return combine_members(torch.stack(outputs, dim=1), self._members[0].spec.target)


class Bag(LayerwiseModel):
    """Bagging: K members of one family, each fitted on its own folds, their predictions averaged."""

    def __init__(self, config, spec, members: list[LayerwiseModel]):
        super().__init__(config, spec)
        self.accepts = type(members[0]).accepts
        self.bag = nn.ModuleList(members)
        self.members = sum(m.members for m in members)
        self.head = BagHead(members)

    @classmethod
    def build(cls, config, spec) -> "Bag":
        """K fresh members of ``config.family`` (reloading a run builds them, then loads the weights)."""
        from . import FAMILIES

        member = config.model_copy(update={"bags": 1})
        return cls(config, spec, [FAMILIES.get(config.family)(member, spec) for _ in range(config.bags)])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.forward_features(x).flatten(1) for m in self.bag], dim=1)

    def output_layers(self) -> list[nn.Module]:
        return [m.head for m in self.bag]

    def reset_head(self, num_outputs: int) -> None:
        for m in self.bag:
            m.reset_head(num_outputs)
        self.head = BagHead(list(self.bag))
