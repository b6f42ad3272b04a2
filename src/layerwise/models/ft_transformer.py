"""FT-Transformer (Gorishniy, Rubachev, Khrulkov & Babenko 2021, "Revisiting Deep Learning Models for
Tabular Data"): every column of a table becomes a token, and a transformer lets the columns attend
to each other.

* **Feature tokenizer** (:class:`~.numeric_embeddings.TabularTokens`): a numeric feature x_j
  becomes ``x_j w_j + b_j`` (or, with ``numeric_embedding: periodic | piecewise``, its PLR/PLE
  embedding, Gorishniy et al. 2022); a categorical column its embedding plus a per-column bias.
* A learned **[CLS] token** in front of the column tokens (no positions: the columns are a set).
* **Pre-norm transformer blocks** with the paper's choices: ReGLU feed-forward layers of hidden
  width ``4/3 * d``, dropout on the attention probabilities (0.2) and in the feed-forward layer
  (0.1), none on the residual branches, and no normalization before the *first* block's attention
  (the tokenizer's output is fed as it is, which the paper found necessary).
* The **head** reads the [CLS] token's final state through ``LayerNorm -> ReLU -> Linear``.

The defaults are the paper's (d 192, 3 blocks, 8 heads). :meth:`FTTransformer.attention_maps`
recomputes the attention probabilities per layer and head for explanation; position 0 is [CLS].
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from . import LayerwiseModel, register_family
from .layers import SelfAttention, attention_maps
from .numeric_embeddings import NumericEmbedding, NumericEmbeddingConfig, TabularTokens

__all__ = ["FTTransformer", "FTTransformerConfig"]


class FTTransformerConfig(NumericEmbeddingConfig):
    family: Literal["ft_transformer"] = "ft_transformer"
    numeric_embedding: NumericEmbedding = Field("none", description="numeric tokens: none (x * w + b per feature, as "
                                                "in the paper), periodic (PLR) or piecewise (PLE); width d_token")
    d_token: int = Field(192, ge=1, description="width of every token; a multiple of heads")
    blocks: int = Field(3, ge=1, description="transformer blocks")
    heads: int = Field(8, ge=1, description="attention heads per block")
    attention_dropout: float = Field(0.2, ge=0, lt=1, description="dropout on the attention probabilities")
    ffn_factor: float = Field(4 / 3, gt=0, description="hidden width of the ReGLU feed-forward layer, as a multiple "
                                                       "of d_token")
    ffn_dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside the feed-forward layer")
    residual_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on each residual branch")

    @model_validator(mode="after")
    def _check_heads(self) -> FTTransformerConfig:
        if self.d_token % self.heads:
            raise ValueError(f"model.d_token must be a multiple of model.heads; received d_token={self.d_token}, "
                             f"heads={self.heads}")
        return self


class ReGLU(nn.Module):
    """Feed-forward layer with a ReLU gate (Shazeer 2020): Linear(d -> 2h), a * relu(b), Linear(h -> d)."""

    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(width, 2 * hidden)
        self.drop = nn.Dropout(dropout)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.c_fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.c_proj(self.drop(a * torch.relu(b)))


class Block(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then x + ffn(ln(x)); the first block skips the first norm."""

    def __init__(self, width: int, heads: int, hidden: int, attention_dropout: float, ffn_dropout: float,
                 residual_dropout: float, first: bool):
        super().__init__()
        self.ln_1 = nn.Identity() if first else nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, attention_dropout)
        # SelfAttention drops its output with the attention dropout; FT-Transformer has its own rate for that
        self.attn.resid_drop = nn.Dropout(residual_dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.ffn = ReGLU(width, hidden, ffn_dropout)
        self.drop = nn.Dropout(residual_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.attn.dropout:
            # the explicit form drops the probabilities with F.dropout, which a graph captured in training
            # form (quantization-aware training) can switch off afterwards; a fused kernel's dropout_p
            # cannot be. A table has few columns, so the explicit (B, heads, T, T) matrix is cheap
            return self.forward_explicit(x)[0]
        x = x + self.attn(self.ln_1(x))
        return x + self.drop(self.ffn(self.ln_2(x)))

    def forward_explicit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, probs = self.attn.forward_explicit(self.ln_1(x))  # probs: (B, heads, T, T)
        x = x + out
        return x + self.drop(self.ffn(self.ln_2(x))), probs


@register_family("ft_transformer")
class FTTransformer(LayerwiseModel):
    """FT-Transformer: one token per column, a [CLS] token, pre-norm ReGLU transformer blocks."""

    accepts = frozenset({"tabular"})
    Config = FTTransformerConfig

    def __init__(self, config: FTTransformerConfig, spec):
        super().__init__(config, spec)
        d = config.d_token
        self.tokens = TabularTokens(spec, d, config.numeric_embedding, config)  # (B, F) -> (B, columns, d)
        self.cls_token = nn.Parameter(torch.empty(1, 1, d).uniform_(-d ** -0.5, d ** -0.5))
        hidden = max(1, round(d * config.ffn_factor))
        self.blocks = nn.ModuleList(Block(d, config.heads, hidden, config.attention_dropout, config.ffn_dropout,
                                          config.residual_dropout, first=i == 0) for i in range(config.blocks))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, spec.num_outputs)
        for block in self.blocks:
            # the paper's attention init: Xavier-uniform queries, keys and values (gain 1/sqrt 2), zero biases
            weight = block.attn.c_attn.weight  # (3d, d): q, k, v stacked
            with torch.no_grad():
                for part in weight.split(d, dim=0):
                    nn.init.xavier_uniform_(part, gain=1 / math.sqrt(2))
            nn.init.zeros_(block.attn.c_attn.bias)
            nn.init.zeros_(block.attn.c_proj.bias)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) rows -> (B, 1 + columns, d): the [CLS] token, then one token per column."""
        h = self.tokens(x)
        return torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self._embed(x)
        for block in self.blocks:
            h = block(h)
        return torch.relu(self.ln_f(h[:, 0]))  # the [CLS] token's final state: (B, d)

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every block, recomputed explicitly: a list of (B, heads, T, T)
        with T = 1 + columns; position 0 is the [CLS] token, whose row the prediction reads.

        >>> maps = model.attention_maps(x)   # doctest: +SKIP
        >>> maps[-1][:, :, 0, 1:]            # what [CLS] looked at, per column  # doctest: +SKIP
        """
        return attention_maps(self.blocks, self._embed(x))
