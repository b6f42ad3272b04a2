"""Building blocks shared by several families."""

from __future__ import annotations

import torch
from torch import nn

from ..data.spec import DataSpec
from ..errors import ModelError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class TabularInput(nn.Module):
    """Flattens inputs, and embeds integer-coded categorical columns (``spec.categorical``)."""

    def __init__(self, spec: DataSpec):
        super().__init__()
        self.slots = [pos for pos, _ in spec.categorical]
        width = 1
        for s in spec.input_shape:
            width *= s
        self.embeddings = nn.ModuleList()
        for _, cardinality in spec.categorical:
            # rule of thumb from fast.ai: min(50, (cardinality + 1) // 2) dimensions
            self.embeddings.append(nn.Embedding(cardinality, min(50, (cardinality + 1) // 2)))
        self.out_features = width - len(self.slots) + sum(e.embedding_dim for e in self.embeddings)
        keep = [i for i in range(width) if i not in set(self.slots)]
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if not self.slots:
            return x
        parts = [x.index_select(1, self.keep)]
        for pos, emb in zip(self.slots, self.embeddings):
            parts.append(emb(x[:, pos].long().clamp_(0, emb.num_embeddings - 1)))
        return torch.cat(parts, dim=1)


class SequenceInput(nn.Module):
    """Maps a sequence batch to (B, T, width): token ids through an embedding, feature vectors
    (``sequence`` inputs, (B, T, F)) through a linear projection. Shared by the sequence families."""

    def __init__(self, spec: DataSpec, width: int):
        super().__init__()
        self.tokens = spec.kind == "tokens"
        if self.tokens:
            if not spec.vocab_size:
                raise ModelError("token inputs need the data's vocab_size; the data source must set it in the spec")
            self.embed = nn.Embedding(spec.vocab_size, width)
        else:
            self.embed = nn.Linear(spec.input_shape[-1], width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x.long() if self.tokens else x)  # (B, T, width)


def pool_sequence(hidden: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, H) → (B, H): the last position, or the mean over positions."""
    if how == "last":
        return hidden[:, -1]
    if how == "mean":
        return hidden.mean(dim=1)
    raise ModelError(f"model.pooling: unknown value {how!r}; choose one of: last, mean")
