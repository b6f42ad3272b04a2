"""Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale").

The image is cut into non-overlapping ``patch_size`` x ``patch_size`` patches, each projected to a
``width``-dimensional token (a convolution whose kernel and stride are the patch size). A learned
CLS token is prepended, learned position embeddings added, and the sequence goes through pre-norm
transformer encoder blocks (LayerNorm → multi-head self-attention → residual, LayerNorm → MLP →
residual). A final LayerNorm; the features are the CLS token, or the mean of the patch tokens.

:meth:`ViT.attention_maps` returns each layer's attention probabilities, computed explicitly rather
than inside the fused kernel, for explanation methods such as attention rollout.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config import ModelConfig
from ..errors import ModelError
from . import LayerwiseModel, register_family

AUTO_PATCHES = (4, 2, 1)  # "auto" takes the largest of these dividing both image sides


class ViTConfig(ModelConfig):
    family: Literal["vit"] = "vit"
    patch_size: int | Literal["auto"] = Field(
        "auto", description="side of the square patches, must divide the image height and width; "
                            "'auto': the largest of 4, 2, 1 that divides both")
    width: int = Field(128, ge=1, description="token dimension (must be divisible by heads)")
    heads: int = Field(4, ge=1, description="attention heads per layer")
    layers: int = Field(4, ge=1, description="transformer encoder blocks")
    mlp_ratio: float = Field(4.0, gt=0, description="hidden size of each block's MLP, as a multiple of width")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention weights, residual branches and embeddings")
    pooling: Literal["cls", "mean"] = Field(
        "cls", description="features: the CLS token, or the mean of the patch tokens (then no CLS token)")


def resolve_patch_size(patch_size: int | str, height: int, width: int) -> int:
    """The patch side for an image of ``height`` x ``width``, or a ModelError naming the valid choices."""
    if patch_size == "auto":
        return next(p for p in AUTO_PATCHES if height % p == 0 and width % p == 0)
    if isinstance(patch_size, int) and patch_size >= 1 and height % patch_size == 0 and width % patch_size == 0:
        return patch_size
    valid = [p for p in range(1, min(height, width) + 1) if height % p == 0 and width % p == 0]
    raise ModelError(
        f"model.patch_size: {patch_size} does not divide the image size {height}x{width}; "
        f"valid choices: {', '.join(map(str, valid))} or 'auto'"
    )


# -- blocks ------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (no mask: every patch sees every patch)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ModelError(f"model.width: {width} must be divisible by model.heads ({heads}); "
                             f"e.g. width {heads * max(1, round(width / heads))}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)  # query, key and value for all heads in one matmul
        self.proj = nn.Linear(width, width)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, nh, T, hs)
        return tuple(t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._split_heads(x)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.proj(y))

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same output without dropout, and the attention probabilities (B, nh, T, T)."""
        B, T, C = x.shape
        q, k, v = self._split_heads(x)  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
        att = att.softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.proj(y), att


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(hidden, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.dropout(self.gelu(self.fc(x)))))


class Block(nn.Module):
    """Pre-norm encoder block: the residual stream is never normalized, which keeps deep stacks stable."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, max(1, round(width * mlp_ratio)), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, att = self.attn.forward_with_weights(self.norm1(x))
        x = x + out
        return x + self.mlp(self.norm2(x)), att


# -- the model ---------------------------------------------------------------------------------


@register_family("vit")
class ViT(LayerwiseModel):
    """Vision Transformer: patch embedding, CLS token, pre-norm transformer encoder, linear head."""

    accepts = frozenset({"image"})
    Config = ViTConfig

    def __init__(self, config: ViTConfig, spec):
        super().__init__(config, spec)
        channels, height, width = spec.input_shape
        self.patch_size = resolve_patch_size(config.patch_size, height, width)
        self.grid = (height // self.patch_size, width // self.patch_size)
        num_patches = self.grid[0] * self.grid[1]
        # a convolution with kernel = stride = patch size is a linear map of each flattened patch
        self.patch_embed = nn.Conv2d(channels, config.width, self.patch_size, stride=self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width)) if config.pooling == "cls" else None
        tokens = num_patches + (1 if self.cls_token is not None else 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, config.width))  # learned, one per token
        self.embed_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, spec.num_outputs)
        self._init_weights()

    def _init_weights(self) -> None:
        # the ViT / timm recipe: truncated normal (std 0.02) for projections and embeddings, zero biases
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.bias)  # the weight keeps PyTorch's fan-in scaled default
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens with positions (B, T, width), T = patches (+ 1 CLS token)."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, width, H/p, W/p) -> (B, N, width)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, width)
        return self.embed_dropout(x + self.pos_embed)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)  # (B, T, width)
        return x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # (B, width)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.pool(x)  # (B, width)

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's attention probabilities, (B, heads, T, T) with rows summing to 1.

        Token 0 is the CLS token when ``pooling`` is "cls"; the patches follow in row-major order.
        Computed without attention dropout, whatever the mode.

        >>> maps = model.attention_maps(images)  # len(maps) == config.layers
        """
        x = self.embed(x)
        maps = []
        for block in self.blocks:
            x, att = block.forward_with_weights(x)
            maps.append(att)
        return maps
