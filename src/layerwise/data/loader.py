"""Mini-batches from in-memory splits, deterministic and resumable.

Batches are drawn by indexing whole tensors with a permutation, which is several times faster than
a ``DataLoader`` collating samples one by one. The order of epoch ``e`` is a pure function of
``(seed, e)`` and augmentation randomness of ``(seed, e, batch)``, so a run resumed mid-epoch draws
exactly the batches it would have drawn.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from .spec import Split

__all__ = ["BatchLoader", "epoch_seed", "batch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s order: a pure function of the run's seed and the epoch."""
    return seed * 1_000_003 + epoch


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """The seed of one training batch's randomness (its augmentation): a pure function of the run's
    seed, the epoch and the batch, so a run resumed mid-epoch draws what it would have drawn."""
    return epoch_seed(seed, epoch) * 100_003 + batch


class BatchLoader:
    """Iterate ``(x, y)`` batches of a :class:`Split`.

    ``transform(x, train, seed)`` turns stored inputs into model inputs (normalization,
    augmentation seeded by ``seed``) after the batch is moved to ``device``.
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 transform: Callable | None = None, train: bool = False, weights: torch.Tensor | None = None,
                 drop_last: bool = False, device: torch.device | str = "cpu"):
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.transform = transform
        self.train = train
        self.weights = weights  # per-sample weights: draw with replacement (weighted sampler)
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.epoch = 0
        self.start_batch = 0

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; ``start_batch`` skips batches already trained (resume)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def _order(self) -> torch.Tensor | None:
        n = len(self.split)
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        if self.weights is not None:
            return torch.multinomial(self.weights, n, replacement=True, generator=gen)
        if self.shuffle:
            return torch.randperm(n, generator=gen)
        return None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        x_all, y_all = self.split.x, self.split.y
        pin = self.device.type == "cuda"
        n = len(self.split)
        for b in range(self.start_batch, len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                x, y = x_all[lo:hi], y_all[lo:hi]
            else:
                idx = order[lo:hi]
                x, y = x_all[idx], y_all[idx]
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            if x.device != self.device:
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
            if self.transform is not None:
                seed = batch_seed(self.seed, self.epoch, b) if self.train else None
                x = self.transform(x, self.train, seed)
            yield x, y
        self.start_batch = 0
