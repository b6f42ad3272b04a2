"""Building blocks shared by several families."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ModelError
from ..data.kinds import input_kind
from ..data.spec import DataSpec
from .numeric_embeddings import categorical_width

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class TabularInput(nn.Module):
    """Flattens inputs, and embeds integer-coded categorical columns (``spec.categorical``); every
    other position passes as it is (the mlp family without numeric embeddings; see
    :mod:`.numeric_embeddings` for the layout-aware :class:`~.numeric_embeddings.TabularFeatures`)."""

    def __init__(self, spec: DataSpec):
        super().__init__()
        self.slots = [pos for pos, _ in spec.categorical]
        width = 1
        for s in spec.input_shape:
            width *= s
        self.embeddings = nn.ModuleList()
        for _, cardinality in spec.categorical:
            self.embeddings.append(nn.Embedding(cardinality, categorical_width(cardinality)))
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
        self.tokens = not input_kind(spec).continuous  # integer ids: embedded, not projected
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


# -- pre-norm transformer blocks (the transformer and vit families) -------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention: one projection to queries, keys and values, one back to the width."""

    def __init__(self, width: int, heads: int, dropout: float, causal: bool = False):
        super().__init__()
        if width % heads:
            raise ModelError(f"model.width: {width} must be divisible by model.heads ({heads}); "
                             f"e.g. width {heads * max(1, round(width / heads))}")
        self.heads = heads
        self.causal = causal
        self.dropout = dropout
        self.c_attn = nn.Linear(width, 3 * width)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(width, width)  # a residual projection: scaled at init by the transformer family
        self.resid_drop = nn.Dropout(dropout)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, C) -> q, k, v, each (B, nh, T, hs)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return tuple(t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, nh, T, hs) -> the heads side by side, projected: (B, T, C)."""
        B, nh, T, hs = y.shape
        return self.resid_drop(self.c_proj(y.transpose(1, 2).reshape(B, T, nh * hs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=self.causal)  # (B, nh, T, hs)
        return self.merge(y)

    def forward_explicit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same as :meth:`forward`, written out, also returning the probabilities (B, nh, T, T)."""
        q, k, v = self.qkv(x)  # (B, nh, T, hs)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])  # (B, nh, T, T)
        if self.causal:
            T = x.shape[1]
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        probs = scores.softmax(dim=-1)
        dropped = F.dropout(probs, self.dropout, self.training)
        return self.merge(dropped @ v), probs

    def step(self, x: torch.Tensor, k_past: torch.Tensor, v_past: torch.Tensor):
        """One new position: x (B, 1, C), cached k, v (B, nh, t, hs) -> (B, 1, C) and k, v (B, nh, t+1, hs)."""
        q, k, v = self.qkv(x)  # (B, nh, 1, hs)
        k, v = torch.cat([k_past, k], dim=2), torch.cat([v_past, v], dim=2)
        # no mask: the one new query may see every cached position, all of them in its past
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, 1, hs)
        return self.merge(y), k, v


class MLP(nn.Module):
    """Position-wise feed-forward: width -> ffn_mult * width -> GELU -> width."""

    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width)  # a residual projection: scaled at init
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float, causal: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout, causal)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_explicit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, probs = self.attn.forward_explicit(self.ln_1(x))
        x = x + out
        return x + self.mlp(self.ln_2(x)), probs

    def step(self, x: torch.Tensor, k_past: torch.Tensor, v_past: torch.Tensor):
        out, k, v = self.attn.step(self.ln_1(x), k_past, v_past)
        x = x + out
        return x + self.mlp(self.ln_2(x)), k, v


def attention_maps(blocks, h: torch.Tensor) -> list[torch.Tensor]:
    """Run ``h`` (B, T, width) through pre-norm ``blocks`` with explicit attention; every layer's
    probabilities (B, heads, T, T), for the transformer and vit families' ``attention_maps``."""
    maps = []
    for block in blocks:
        h, probs = block.forward_explicit(h)
        maps.append(probs)
    return maps
