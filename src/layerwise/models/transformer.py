"""The Transformer (Vaswani et al. 2017, "Attention Is All You Need") in the pre-LayerNorm form of GPT-2
(Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"), after nanoGPT.

One family, two uses, chosen by ``causal``:

* an *encoder* (``causal: false``): every position attends to every other; a learned CLS token
  (``pooling: cls``), the mean or the last position feeds the head (classification, regression);
* a *decoder-only* GPT-style model (``causal: true``): position t attends to positions <= t only, so
  it can also run one token at a time with a KV cache (:meth:`Transformer.init_state`,
  :meth:`Transformer.step`). For language modelling (a ``token`` target) the head maps every
  position to next-token logits through the embedding matrix (weight tying, ``tie_weights``).

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (FlashAttention or
memory-efficient kernels on a GPU); :meth:`Transformer.attention_maps` recomputes the attention
probabilities explicitly, per layer and head, for explanation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..core.config import ModelConfig
from ..core.errors import ModelError
from . import LayerwiseModel, register_family
from .layers import Block, SequenceInput, attention_maps, pool_sequence

__all__ = ["KVCache", "Transformer", "TransformerConfig"]


def sinusoidal_positions(max_len: int, width: int) -> torch.Tensor:
    """The fixed encoding of Vaswani et al.: sin and cos of position / 10000^(2i/width), (max_len, width)."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(max_len, width)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: width // 2])  # an odd width has one sine more
    return table


# -- the model ---------------------------------------------------------------------------------


class TransformerConfig(ModelConfig):
    family: Literal["transformer"] = "transformer"
    width: int = Field(128, ge=1, description="model width (d_model); a multiple of heads")
    heads: int = Field(4, ge=1, description="attention heads per layer")
    layers: int = Field(4, ge=1, description="transformer blocks")
    ffn_mult: int = Field(4, ge=1, description="feed-forward hidden width, as a multiple of width")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on embeddings, attention and residual branches")
    positions: Literal["learned", "sinusoidal"] = Field("learned", description="learned position embeddings, or the "
                                                        "fixed sinusoidal encoding")
    max_len: int = Field(512, ge=1, description="longest sequence (and generation) the model accepts")
    causal: bool = Field(False, description="false: encoder, every position sees all; true: decoder-only "
                                            "GPT-style model, position t sees <= t (step-by-step generation)")
    pooling: Literal["cls", "mean", "last"] = Field("cls", description="what feeds the head: a learned CLS token "
                                                    "(encoder only), the mean over positions, or the last position")
    tie_weights: bool = Field(True, description="language models: the output layer reuses the token "
                                                "embedding matrix")

    @model_validator(mode="after")
    def _check_combination(self) -> TransformerConfig:
        if self.width % self.heads:
            raise ValueError(f"model.width must be a multiple of model.heads; received width={self.width}, "
                             f"heads={self.heads}")
        if self.causal and self.pooling == "cls":
            raise ValueError("model.pooling: 'cls' needs causal: false (a causal model's first position sees "
                             "nothing after it); received pooling='cls', causal=true; use pooling 'last' or 'mean'")
        return self


@dataclass
class KVCache:
    """What a causal transformer has seen so far: per layer the keys and values (B, nh, t, hs)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    position: int  # positions seen so far (t); the next step's position index


@register_family("transformer")
class Transformer(LayerwiseModel):
    """Pre-LayerNorm transformer: an encoder (CLS, mean or last pooling), or a causal GPT-style decoder."""

    accepts = frozenset({"sequence", "tokens"})
    Config = TransformerConfig

    def __init__(self, config: TransformerConfig, spec):
        super().__init__(config, spec)
        width = config.width
        self.inputs = SequenceInput(spec, width)  # ids or features -> (B, T, width)
        if config.positions == "learned":
            self.pos_embed = nn.Embedding(config.max_len, width)
        else:  # not saved: rebuilt from the config
            self.register_buffer("pos_table", sinusoidal_positions(config.max_len, width), persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if config.pooling == "cls" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(width, config.heads, config.ffn_mult * width, config.dropout, config.causal)
                                    for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(width)
        language_model = spec.target == "token" and self.inputs.tokens
        # a language model's head maps to the vocabulary; tied, it reuses the (vocab, width) embedding
        self.head = nn.Linear(width, spec.num_outputs, bias=not language_model)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: residual projections scaled by 1/sqrt(2 * layers)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.layers))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        if language_model and config.tie_weights:
            self.head.weight = self.inputs.embed.weight  # one (vocab, width) matrix in and out

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # -- whole sequences ------------------------------------------------------------------------
    def _positions(self, start: int, length: int, device: torch.device) -> torch.Tensor:
        """Position encodings for positions start .. start+length-1: (length, width)."""
        if start + length > self.config.max_len:
            raise ModelError(f"model.max_len: the sequence reaches position {start + length} but the model takes at "
                             f"most max_len={self.config.max_len}; raise model.max_len or shorten the sequences")
        if self.config.positions == "learned":
            return self.pos_embed(torch.arange(start, start + length, device=device))
        return self.pos_table[start:start + length]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) ids or (B, T, F) features -> (B, T', width), T' = T + 1 with a CLS token in front."""
        h = self.inputs(x)  # (B, T, width)
        h = h + self._positions(0, h.shape[1], h.device)  # the CLS token below needs no position
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)  # (B, 1 + T, width)
        return self.drop(h)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Every position after the final norm, the CLS token included: (B, T', width)."""
        h = self._embed(x)
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h)

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Every input position's output: (B, T) ids or (B, T, F) features -> (B, T, width)."""
        h = self._encode(x)
        return h[:, 1:] if self.cls_token is not None else h

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self._encode(x)  # (B, T', width)
        if self.cls_token is not None:
            return h[:, 0]  # the CLS token, which attended to every position
        return pool_sequence(h, self.config.pooling)  # (B, width)

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every layer, recomputed explicitly: a list of (B, heads, T', T').

        Row i holds how position i distributes its attention over positions; rows sum to 1 and a
        causal model's maps are lower-triangular. With ``pooling: cls`` position 0 is the CLS token
        (T' = T + 1), so ``maps[-1][:, :, 0]`` is what the classifier's token looked at.

        >>> maps = model.attention_maps(x)   # doctest: +SKIP
        >>> maps[0].shape                    # (B, heads, T, T)  # doctest: +SKIP
        """
        return attention_maps(self.blocks, self._embed(x))

    # -- one position at a time (causal generation) -----------------------------------------------
    def init_state(self, batch_size: int) -> KVCache:
        """An empty KV cache: per layer keys and values of shape (B, heads, 0, width // heads)."""
        self._check_causal()
        weight = self.head.weight
        heads, hs = self.config.heads, self.config.width // self.config.heads
        empty = [weight.new_zeros(batch_size, heads, 0, hs) for _ in self.blocks]
        return KVCache(keys=empty, values=list(empty), position=0)

    def step(self, x_t: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One position: ``x_t`` is (B, F) features or (B,) token ids; returns (B, width) and the grown cache.

        Earlier positions are not recomputed: the new query attends to the cached keys and values.
        The cache passed in is left unchanged, so it can be reused (e.g. to branch a generation).

        >>> state = model.init_state(4)                               # doctest: +SKIP
        >>> for t in range(T): h, state = model.step(x[:, t], state)  # doctest: +SKIP
        >>> next_token = model.forward_head(h).argmax(-1)             # doctest: +SKIP
        """
        self._check_causal()
        h = self.inputs(x_t.unsqueeze(1))  # (B, 1, width)
        h = self.drop(h + self._positions(state.position, 1, h.device))
        keys, values = [], []
        for block, k_past, v_past in zip(self.blocks, state.keys, state.values):
            h, k, v = block.step(h, k_past, v_past)  # k, v: (B, nh, t + 1, hs)
            keys.append(k)
            values.append(v)
        return self.ln_f(h)[:, 0], KVCache(keys=keys, values=values, position=state.position + 1)

    def _check_causal(self) -> None:
        if not self.config.causal:
            raise ModelError("model.causal: an encoder transformer attends to later positions, so it cannot run "
                             "step by step; set model.causal: true (and pooling 'last' or 'mean') to generate")
