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

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..core.config import ModelConfig
from ..core.errors import ModelError
from . import LayerwiseModel, register_family
from .layers import Block, attention_maps

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
        hidden = max(1, round(config.width * config.mlp_ratio))
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, hidden, config.dropout) for _ in range(config.layers)  # no mask
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
        The probabilities are returned before attention dropout.

        >>> maps = model.attention_maps(images)  # len(maps) == config.layers
        """
        return attention_maps(self.blocks, self.embed(x))
