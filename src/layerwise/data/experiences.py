"""Class-incremental experiences: a training split shown one group of classes at a time, optionally
joined by a replay memory of the groups already shown.

An experience is a group of classes (split-MNIST: {0, 1}, then {2, 3}, ...). Experience ``k`` is
trained for ``epochs_per_experience`` epochs, so the epoch number alone says which one is current:
a resumed run knows where it is without any state of its own.

Every epoch has the same number of batches, as many as a pass over the largest experience (the loop
plans its schedule and its accumulation windows from one length): a smaller experience's pass goes
on into a fresh shuffle of its samples for the last batches. Batches are always ``batch_size`` long.

Replay (Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning"): from experience 2
on, each batch of the current classes is joined by as many samples drawn from a memory of the past
experiences' training samples. The memory holds at most ``replay_size`` samples, class-balanced:
each past class keeps ``replay_size // classes seen`` samples, the first ones of a fixed shuffle of
that class. As classes arrive each class's share shrinks to a prefix of what it held, so this is
the memory a learner could have kept while streaming (it never needs a sample it dropped), and it is
a pure function of the seed and the experience: nothing to save for an exact resume.

Orders and draws come from generators seeded by (seed, epoch, batch), like ``BatchLoader``'s.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..core.errors import ConfigError
from .loader import batch_seed
from .spec import Split

__all__ = ["ExperienceLoader"]

# the first number of a generator's seed says what it draws, so no two draws share a stream
ORDER, MEMORY, REPLAY = 0, 1, 2


class ExperienceLoader:
    """``(x, y)`` batches of the current experience's classes of ``split`` (plus replayed samples).

    ``experiences``: the class indices of each experience, in training order; epoch ``e`` trains
    experience ``e // epochs_per_experience``. ``replay_size`` 0: no replay.

    >>> loader = ExperienceLoader(split, [[0, 1], [2, 3]], 2, batch_size=32, replay_size=200)  # doctest: +SKIP
    >>> loader.set_epoch(2)            # epochs 2 and 3: classes 2, 3 and replayed 0, 1  # doctest: +SKIP
    """

    def __init__(self, split: Split, experiences: Sequence[Sequence[int]], epochs_per_experience: int, batch_size: int,
                 *, replay_size: int = 0, seed: int = 0, transform: Callable | None = None,
                 device: torch.device | str = "cpu", names: Sequence[str] | None = None):
        self.split, self.batch_size, self.replay_size = split, batch_size, replay_size
        self.experiences = [list(map(int, group)) for group in experiences]
        self.epochs_per_experience = epochs_per_experience
        self.seed, self.transform, self.device = seed, transform, torch.device(device)
        labels = split.y.numpy()
        self.by_class = {c: np.flatnonzero(labels == c) for group in self.experiences for c in group}
        empty = [c for c, index in self.by_class.items() if len(index) == 0]
        if empty:
            name = names[empty[0]] if names is not None and empty[0] < len(names) else empty[0]
            raise ConfigError(f"task.splits: class {name!r} has no training samples, so its experience would "
                              f"train on nothing; leave it out of the data or give it samples")
        self.sizes = [sum(len(self.by_class[c]) for c in group) for group in self.experiences]
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        return -(-max(self.sizes) // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def experience(self) -> int:
        """The index of the experience the current epoch trains."""
        return min(self.epoch // self.epochs_per_experience, len(self.experiences) - 1)

    def indices(self, k: int) -> np.ndarray:
        """Every training sample of experience ``k``, by index into the split."""
        return np.concatenate([self.by_class[c] for c in self.experiences[k]])

    def memory(self, k: int) -> np.ndarray:
        """The replay memory while experience ``k`` trains: the class-balanced share of every earlier
        experience's classes (empty for the first experience or without replay)."""
        seen = [c for group in self.experiences[:k] for c in group]
        if not seen or not self.replay_size:
            return np.zeros(0, dtype=np.int64)
        share = self.replay_size // len(seen)
        kept = [np.random.default_rng([self.seed, MEMORY, c]).permutation(self.by_class[c])[:share] for c in seen]
        return np.concatenate(kept)

    def _order(self, k: int) -> np.ndarray:
        """The epoch's samples of experience ``k``: shuffles of it end to end, cut at a whole epoch."""
        rng = np.random.default_rng([self.seed, ORDER, self.epoch])
        index, needed = self.indices(k), len(self) * self.batch_size
        passes = [rng.permutation(index) for _ in range(-(-needed // len(index)))]
        return np.concatenate(passes)[:needed]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        k = self.experience
        order, memory = self._order(k), self.memory(k)
        for b in range(self.start_batch, len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            if len(memory):  # as many past samples as current ones (with replacement only if the memory is smaller)
                rng = np.random.default_rng([self.seed, REPLAY, self.epoch, b])
                index = np.concatenate([index, rng.choice(memory, size=len(index), replace=len(memory) < len(index))])
            x, y = self.split.x[torch.from_numpy(index)], self.split.y[torch.from_numpy(index)]
            x, y = x.to(self.device), y.to(self.device)
            if self.transform is not None:  # augmentation seeded like BatchLoader's: a resume augments alike
                x = self.transform(x, True, batch_seed(self.seed, self.epoch, b))
            yield x, y
        self.start_batch = 0

    def samples(self, k: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``count`` training samples of experience ``k``, model-ready without augmentation (the
        data an EWC Fisher is estimated on), drawn by a generator seeded by ``seed`` and ``k``."""
        index = self.indices(k)
        rng = np.random.default_rng([seed, k])
        index = rng.choice(index, size=min(count, len(index)), replace=False)
        x, y = self.split.x[torch.from_numpy(index)].to(self.device), self.split.y[torch.from_numpy(index)]
        if self.transform is not None:
            x = self.transform(x, False, None)
        return x, y.to(self.device)
