"""The ``local`` strategy: the one loop, in this process, on ``train.device`` (the default)."""

from __future__ import annotations

from . import Strategy, register_strategy

__all__ = ["Local"]


@register_strategy("local")
class Local(Strategy):
    """``trainer.fit`` as it is: one process, one device."""

    def fit(self, trainer, train_loader, val_loader=None):
        return trainer.fit(train_loader, val_loader)
