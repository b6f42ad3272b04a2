"""Episodes for few-shot learning: N classes, K labelled examples of each, Q more to classify.

An episode (Vinyals et al. 2016, "Matching Networks for One Shot Learning") draws ``ways`` classes
from a set, then ``shots + queries`` distinct samples of each: the first ``shots`` are the support
set (the labelled examples), the rest the query set (what the model must classify from them).
Support and query never share a sample. A batch is one episode, ordered support first, class by
class, then queries, with labels renumbered 0 .. ways - 1 in the episode's class order; the task
reads the episode's shape from its size (``ways * (shots + queries)``), so one loader can serve
episodes of 1 and of 5 shots.

Episodes are drawn from a seeded generator per (seed, epoch), so a resumed run draws the episodes
it would have (``set_epoch`` skips the ones already trained), and an evaluation draws the same
episodes every time.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..core.errors import ConfigError
from .spec import Split

__all__ = ["EpisodeLoader", "episode_layout"]


def episode_layout(size: int, ways: int, queries: int) -> int:
    """The shots of an episode of ``size`` samples (support first, then queries)."""
    return size // ways - queries


class EpisodeLoader:
    """``episodes`` episodes per pass over ``split`` restricted to ``classes``, each with ``shots``
    support and ``queries`` query samples per class (a list of shots: one pass of each)."""

    def __init__(self, split: Split, classes: Sequence[int], ways: int, shots: int | Sequence[int], queries: int,
                 episodes: int, *, seed: int = 0, transform: Callable | None = None,
                 device: torch.device | str = "cpu", what: str = "episodes", names: Sequence[str] | None = None):
        self.split, self.ways, self.queries, self.episodes = split, ways, queries, episodes
        self.shots = [shots] if isinstance(shots, int) else list(shots)
        self.seed, self.transform, self.device = seed, transform, torch.device(device)
        labels = split.y.numpy()
        self.by_class = {int(c): np.flatnonzero(labels == c) for c in classes}
        if len(self.by_class) < ways:
            raise ConfigError(f"task.ways: {what} need {ways} classes; only {len(self.by_class)} are available "
                              f"({', '.join(self._name(c, names) for c in self.by_class)}): lower task.ways")
        need = max(self.shots) + queries
        short = {c: len(i) for c, i in self.by_class.items() if len(i) < need}
        if short:
            c, n = next(iter(short.items()))
            raise ConfigError(f"task.shots/queries: {what} need {need} samples of each class ({max(self.shots)} shots "
                              f"+ {queries} queries); class {self._name(c, names)} has {n} in its split: lower "
                              f"task.queries or task.shots")
        self.epoch, self.start_batch = 0, 0

    @staticmethod
    def _name(c: int, names: Sequence[str] | None) -> str:
        return repr(names[c]) if names is not None and c < len(names) else str(c)

    def __len__(self) -> int:
        return self.episodes * len(self.shots)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self) -> Iterator[tuple[np.ndarray, int]]:
        """Each episode's sample indices into the split (support, then queries) and its shots."""
        rng = np.random.default_rng([self.seed, self.epoch])
        classes = np.array(sorted(self.by_class))
        for shots in self.shots:
            for _ in range(self.episodes):
                chosen = rng.choice(classes, size=self.ways, replace=False)
                picks = [rng.choice(self.by_class[int(c)], size=shots + self.queries, replace=False) for c in chosen]
                support = np.concatenate([p[:shots] for p in picks])
                query = np.concatenate([p[shots:] for p in picks])
                yield np.concatenate([support, query]), shots

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, (index, shots) in enumerate(self.indices()):
            if i < self.start_batch:
                continue  # trained before a resume
            x = self.split.x[torch.from_numpy(index)]
            if self.transform is not None:
                x = self.transform(x)
            per_class = torch.arange(self.ways)
            y = torch.cat([per_class.repeat_interleave(shots), per_class.repeat_interleave(self.queries)])
            yield x.to(self.device), y.to(self.device)
        self.start_batch = 0
