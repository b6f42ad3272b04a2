"""The callback that records a training run's energy and CO2 (see :mod:`layerwise.ops.energy`).

It starts an :class:`~layerwise.ops.energy.EnergyMeter` when fitting starts and stops it when fitting
ends. Its state (the energy of earlier sessions plus this one's so far) travels in every checkpoint,
so a resumed run reports the sum over all its sessions.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.callback import Callback
from ..core.sections import register_section
from ..ops.energy import EnergyMeter, describe

__all__ = ["EnergyCallback"]

_SUMMED = ("duration_s", "energy_kwh", "co2_kg")


class EnergyCallback(Callback):
    """Measure each fit session; ``result`` is the run's total after :meth:`on_fit_end`."""

    def __init__(self, device: torch.device | str = "cpu", method: str = "auto", country: str | None = None):
        self.meter = EnergyMeter(device, method, country=country)
        self.previous: dict[str, Any] | None = None  # the sum of earlier sessions (from a checkpoint)
        self.result: dict[str, Any] | None = None

    def on_fit_start(self, trainer) -> None:
        self.meter.start()

    def on_batch_end(self, trainer, logs) -> None:
        self.meter.poll_if_due()  # a RAPL counter may wrap in a long epoch; a clock check otherwise

    def on_fit_end(self, trainer) -> None:
        if self.meter._started is None:  # fit ended twice (divergence): keep the first figures
            return
        self.result = self._total(self.meter.stop())

    def _total(self, session: dict[str, Any]) -> dict[str, Any]:
        if not self.previous:
            return dict(session, sessions=1)
        total = dict(session)
        for key in _SUMMED:
            before, now = self.previous.get(key), session.get(key)
            total[key] = None if before is None or now is None else before + now
        total["sessions"] = self.previous.get("sessions", 1) + 1
        if self.previous.get("method") != session["method"]:
            total["note"] = f"{session['note']}; earlier sessions measured by {self.previous.get('method')}"
        return total

    def state_dict(self) -> dict[str, Any]:
        # the checkpoint is written mid-fit: store what has been measured so far (CodeCarbon: earlier sessions)
        if self.meter._started is not None and self.meter.method != "codecarbon":
            return {"total": self._total(self.meter.read())}
        return {"total": self.result or self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = state.get("total")


@register_section("energy")
def energy_section(run) -> tuple[str, str] | None:
    """The report's "Energy" section: the run's measured or estimated energy and CO2."""
    import html

    metrics = run.metrics
    if "energy" not in metrics:  # a run from before energy accounting
        return None
    result = metrics["energy"]
    rows = [("energy and CO2", describe(result))]
    if result:
        rows += [("method", result["method"]), ("sessions", result.get("sessions", 1)), ("note", result["note"])]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return "Energy", f"<table>{body}</table>"
