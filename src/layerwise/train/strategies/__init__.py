"""Training strategies: how a run's fit is executed, chosen by ``train.strategy``.

The loop itself (:class:`~layerwise.train.trainer.Trainer`) does not change between strategies; a
strategy decides where and how it runs. Today there is one, ``local``: the loop in this process, on
``train.device``. The seam exists so that training across processes or machines is one file each:

- a ``ddp`` strategy (launched by ``torchrun``) would wrap ``trainer.model`` in
  ``DistributedDataParallel``, give each rank its shard of the training loader, and let only rank 0
  keep the callbacks that write files;
- a ``federated`` strategy would run rounds of local fits on clients' data and aggregate their
  weights into ``trainer.model`` between rounds.

A strategy gets the run's :class:`~layerwise.core.config.TrainConfig` when it is built and the ready
trainer and loaders in :meth:`Strategy.fit`, and returns the history as ``Trainer.fit`` does:

>>> strategy = STRATEGIES.get(cfg.train.strategy)(cfg.train)           # doctest: +SKIP
>>> history = strategy.fit(trainer, train_loader, val_loader)          # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ...core.registry import Registry, import_submodules

if TYPE_CHECKING:
    from ...core.config import TrainConfig
    from ..trainer import Trainer

__all__ = ["STRATEGIES", "Strategy", "register_strategy"]

STRATEGIES: Registry[type["Strategy"]] = Registry("training strategy", key="train.strategy")


class Strategy:
    """Base class: runs ``trainer.fit`` somewhere. Subclasses override :meth:`fit`."""

    name: ClassVar[str]

    def __init__(self, cfg: "TrainConfig"):
        self.cfg = cfg

    def fit(self, trainer: "Trainer", train_loader, val_loader=None) -> list[dict[str, Any]]:
        """Train until the trainer stops; return its history."""
        raise NotImplementedError


def register_strategy(name: str):
    """Register a :class:`Strategy` subclass under ``name`` (the value of ``train.strategy``)."""

    def add(cls):
        cls.name = name
        return STRATEGIES.register(name)(cls)

    return add


import_submodules(__name__)  # each strategy file registers itself
