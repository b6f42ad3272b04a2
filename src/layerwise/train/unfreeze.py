"""Which layers train in which epoch when fine-tuning: ``train.unfreeze``.

A new output layer starts random; trained together with loaded features from the first step, its
large early gradients move those features before it has learnt anything (Kumar et al. 2022,
"Fine-Tuning can Distort Pretrained Features": linear probing, then fine-tuning, LP-FT). With
``head_epochs: N`` only the head trains for N epochs. With ``every: M`` the other layers are then
released one group at a time from the top, one more every M epochs (gradual unfreezing, Howard &
Ruder 2018, ULMFiT), so the layers nearest the input, the most general, move last.

The schedule is a function of the epoch alone, so a resumed run is in the same phase as the run it
continues. Layers in ``train.freeze`` are never released. The optimizer holds every parameter that
may train from the start (a frozen one has no gradient, and AdamW and SGD leave a parameter without
one untouched, weight decay included); the epoch's log says how many layer groups trained.
"""

from __future__ import annotations

import torch

from ..models.transfer import layer_groups

__all__ = ["UnfreezeSchedule"]


class UnfreezeSchedule:
    """Sets ``requires_grad`` on ``model``'s layer groups for each epoch (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, head_epochs: int, every: int):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}  # train.freeze stays out
        self.groups = [[n for n in group if n in trainable] for group in layer_groups(model)]
        self.groups = [group for group in self.groups if group]
        self.parameters = dict(model.named_parameters())
        self.warm = head_epochs or every  # `every` alone: the head first for that many epochs too
        self.every = every

    def released(self, epoch: int) -> int:
        """Layer groups, counted from the top (the head), that train in ``epoch`` (0-based)."""
        if epoch < self.warm:
            return 1
        if self.every == 0:
            return len(self.groups)
        return min(len(self.groups), 2 + (epoch - self.warm) // self.every)

    def apply(self, epoch: int) -> int:
        """Freeze and release for ``epoch``; returns the number of groups that train."""
        n = self.released(epoch)
        top = len(self.groups) - n
        for i, group in enumerate(self.groups):
            for name in group:
                self.parameters[name].requires_grad_(i >= top)
        return n

    def restore(self) -> None:
        """Every layer the schedule holds trainable again (after the fit: tools fine-tune the model later)."""
        for group in self.groups:
            for name in group:
                self.parameters[name].requires_grad_(True)
