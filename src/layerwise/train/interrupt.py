"""Ctrl-C and SIGTERM: stop at a step boundary with a checkpoint, like a scheduler's preemption.

A batch scheduler (Slurm, Kubernetes) ends a job with SIGTERM and a grace period; a person presses
Ctrl-C. Either way the work since the last checkpoint should not be lost, and nothing may be left
half-written. Inside :meth:`Trainer.fit` the first signal only sets a flag (``defer=True``): the
loop finishes the optimizer step it is in, writes a checkpoint and raises
:class:`~layerwise.core.errors.TrainingInterrupted`. Outside the loop, and on a second signal, the
signal raises at once (``KeyboardInterrupt`` semantics: ``finally`` blocks and atomic writes clean up).

Handlers can only be installed from the main thread; elsewhere these are no-ops and the process
keeps its own handling.
"""

from __future__ import annotations

import signal
import threading

from ..core.errors import TrainingInterrupted

__all__ = ["StopSignals", "signal_name"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class StopSignals:
    """Context manager: while inside, SIGINT/SIGTERM set :attr:`signum` (``defer=True``, once) or raise
    :class:`TrainingInterrupted` (``defer=False``, or a second signal)."""

    def __init__(self, defer: bool):
        self.defer = defer
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:  # None: installed from C; leave ours rather than fail
                signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.defer and self.signum is None:
            self.signum = signum  # the loop stops at its next step boundary
            return
        again = " again" if self.signum is not None else ""
        raise TrainingInterrupted(f"interrupted{again} ({signal_name(signum)})", signum)
