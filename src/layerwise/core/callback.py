"""The hooks the one training loop calls. Training's own callbacks (early stopping, checkpoints,
progress) and the tasks' (EMA weights, samples per epoch) implement them; they live here, below both."""

from __future__ import annotations

from typing import Any

__all__ = ["Callback"]


class Callback:
    """Base class: every hook does nothing."""

    def on_fit_start(self, trainer) -> None: ...
    def on_epoch_start(self, trainer) -> None: ...
    def on_batch_end(self, trainer, logs: dict[str, Any]) -> None: ...
    def on_epoch_end(self, trainer, logs: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer) -> None: ...
    def on_interrupt(self, trainer) -> None: ...  # Ctrl-C or SIGTERM, at a step boundary, before on_fit_end

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
