"""The training loop, its callbacks, optimizers, schedules, checkpoints and strategies."""

from ..core.callback import Callback
from ..core.device import autocast_context, resolve_device
from .callbacks import Checkpoint, EarlyStopping, EpochPrinter, HistoryCSV, ProgressBar
from .checkpoint import load_checkpoint, save_checkpoint, seed_everything
from .optim import OPTIMIZERS, SCHEDULERS
from .strategies import STRATEGIES, Strategy, register_strategy
from .trainer import StepContext, Trainer

__all__ = ["Trainer", "StepContext", "Callback", "Checkpoint", "EarlyStopping", "EpochPrinter", "HistoryCSV",
           "ProgressBar", "OPTIMIZERS", "SCHEDULERS", "STRATEGIES", "Strategy", "register_strategy",
           "load_checkpoint", "save_checkpoint", "seed_everything", "resolve_device", "autocast_context"]
