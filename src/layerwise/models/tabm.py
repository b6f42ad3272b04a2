"""TabM (Gorishniy, Kotelnikov & Babenko 2024, "TabM: Advancing Tabular Deep Learning with
Parameter-Efficient Ensembling"): one MLP that is an ensemble of k members sharing most weights.

Every member sees the same row; the members differ only by small per-member factors, in the style of
BatchEnsemble (Wen et al. 2020). A shared linear layer ``W`` becomes, for member i,

    y_i = ((x_i * r_i) W^T) * s_i + b_i        r_i, s_i, b_i: per-member vectors

* ``adapters: full`` (TabM): every linear layer of the backbone has its r_i, s_i and b_i;
* ``adapters: mini`` (TabM-mini): only one multiplicative adapter r_i, on the input of the first
  layer; the backbone itself is shared entirely.

Each member has its own output layer. The members are trained each on its own loss (the ensemble
contract of :mod:`layerwise.models`: in training mode the model returns (B, k, outputs)), and
predict together: the mean of their probabilities (classes) or values (regression).

Initialisation, as in the paper's reference code: every multiplicative factor starts at 1 except
the first adapter, which decorrelates the members from the start. It starts at random signs (±1),
or, with numeric embeddings, at values drawn from N(0, 1); either way one value per member and per
input *column* (an embedded feature's whole vector, a one-hot group), so a member re-weights columns,
not their parts. Per-member biases start equal (one shared draw), as do the members' weights.

The defaults are the paper's recommended TabM-mini with piecewise-linear embeddings (TabM†-mini):
the best variant on average in its benchmarks, with fewer parameters than full adapters; with
embeddings the reference suggests a depth of 2 instead of 3. k = 32 members, width 512, dropout 0.1.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from . import LayerwiseModel, combine_members, register_family
from .numeric_embeddings import FlatEmbeddingConfig, NumericEmbedding, TabularFeatures

__all__ = ["EnsembleHead", "EnsembleLinear", "MemberScale", "TabM", "TabMConfig"]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class TabMConfig(FlatEmbeddingConfig):
    family: Literal["tabm"] = "tabm"
    numeric_embedding: NumericEmbedding = Field("piecewise", description="embedding of each numeric feature: none, "
                                                "periodic (PLR) or piecewise (PLE on the data's quantile bins)")
    k: int = Field(32, ge=1, description="ensemble members, sharing the backbone's weights")
    adapters: Literal["mini", "full"] = Field("mini", description="mini: one per-member scaling of the input (TabM-mini); "
                                              "full: per-member scalings and biases in every layer (TabM)")
    width: int = Field(512, ge=1, description="width of each hidden layer")
    blocks: int = Field(2, ge=1, description="hidden layers (Linear -> activation -> dropout)")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout after each hidden layer")
    activation: Literal["relu", "gelu", "silu"] = Field("relu", description="non-linearity")


class MemberScale(nn.Module):
    """TabM-mini's adapter: member i multiplies its input by r_i, (B, k, D) -> (B, k, D)."""

    def __init__(self, k: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(k, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class EnsembleLinear(nn.Module):
    """BatchEnsemble's linear layer: ``y_i = ((x_i * r_i) W^T) * s_i + b_i``, (B, k, in) -> (B, k, out)."""

    def __init__(self, k: int, in_features: int, out_features: int):
        super().__init__()
        bound = in_features ** -0.5  # nn.Linear's uniform range
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.r = nn.Parameter(torch.ones(k, in_features))
        self.s = nn.Parameter(torch.ones(k, out_features))
        # one draw for every member: k equal biases that training pulls apart
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound).repeat(k, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.r) @ self.weight.T * self.s + self.bias


class EnsembleHead(nn.Module):
    """k output layers, one per member: features (B, k * d) -> (B, k, outputs).

    ``in_features`` is k * d, the width of the features the model hands its head (the contract's
    ``num_features``)."""

    def __init__(self, k: int, d: int, out_features: int):
        super().__init__()
        bound = d ** -0.5
        self.k, self.d = k, d
        self.in_features, self.out_features = k * d, out_features
        self.weight = nn.Parameter(torch.empty(k, d, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(k, out_features).uniform_(-bound, bound))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = features.reshape(features.shape[0], self.k, self.d)  # (B, k, d)
        return (h.transpose(0, 1) @ self.weight).transpose(0, 1) + self.bias  # (B, k, outputs)


@register_family("tabm")
class TabM(LayerwiseModel):
    """TabM: an MLP ensemble of k members sharing weights, with per-member adapters (BatchEnsemble-style)."""

    accepts = frozenset({"tabular"})
    Config = TabMConfig

    def __init__(self, config: TabMConfig, spec):
        super().__init__(config, spec)
        k = config.k
        self.members = k
        self.inputs = TabularFeatures(spec, config.numeric_embedding, config)  # (B, F) -> (B, D)
        width_in = self.inputs.out_features
        self.adapter = MemberScale(k, width_in) if config.adapters == "mini" else None
        layers: list[nn.Module] = []
        for i in range(config.blocks):
            size_in = width_in if i == 0 else config.width
            layers.append(nn.Linear(size_in, config.width) if config.adapters == "mini"
                          else EnsembleLinear(k, size_in, config.width))
            layers.append(ACTIVATIONS[config.activation]())
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
        self.backbone = nn.Sequential(*layers)  # (B, k, D) -> (B, k, width), shared by the members
        first = self.adapter.weight if self.adapter is not None else self.backbone[0].r
        self._init_first_adapter(first, self.inputs.sections, config.numeric_embedding != "none")
        self.head = EnsembleHead(k, config.width, spec.num_outputs)

    @staticmethod
    @torch.no_grad()
    def _init_first_adapter(weight: torch.Tensor, sections: list[int], normal: bool) -> None:
        """One random value per member and input column, spread over the column's section of ``weight`` (k, D)."""
        k = weight.shape[0]
        values = torch.randn(k, len(sections)) if normal else torch.randint(0, 2, (k, len(sections))) * 2.0 - 1
        weight.copy_(values.repeat_interleave(torch.tensor(sections), dim=1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inputs(x)  # (B, D)
        h = h.unsqueeze(1).expand(-1, self.members, -1)  # every member sees the same row: (B, k, D)
        if self.adapter is not None:
            h = self.adapter(h)
        return self.backbone(h).flatten(1)  # the members' features side by side: (B, k * width)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        out = self.head(features)  # (B, k, outputs)
        if self.training:
            return out  # each member trains on its own loss (the ensemble contract)
        return combine_members(out, self.spec.target)  # (B, outputs)

    def reset_head(self, num_outputs: int) -> None:
        """Replace the k output layers (fine-tuning on a new label set)."""
        self.head = EnsembleHead(self.members, self.config.width, num_outputs).to(self.head.weight.device)
