"""Embeddings of numeric features (Gorishniy, Rubachev & Babenko 2022, "On Embeddings for Numerical
Features in Tabular Deep Learning"), and the modules that turn a tabular row into tokens or one flat
vector with them. Shared by the tabular families (mlp, resmlp, ft_transformer, tabm).

A network that reads a scaled number ``x`` as one input among many draws smooth functions of it; the
targets of real tables often jump at thresholds, which trees find at once. Embedding each scalar into
a vector before the network closes much of that gap:

* **periodic** (PLR): ``[cos(2π c x), sin(2π c x)]`` with ``k`` trainable frequencies ``c ~ N(0, σ)``
  per feature, then a linear layer per feature and a ReLU. ``σ`` sets how fine a detail the features
  can resolve at the start (the paper's most important hyperparameter); the *lite* form shares the
  linear layer across features.
* **piecewise linear** (PLE): with bin edges ``b_0 < ... < b_T`` (quantiles of the training values,
  ``DataSpec.bins``) ``x`` becomes one value per bin: 1 for the bins wholly below it, 0 for those
  above, the covered fraction of its own bin. The first bin is not clipped below and the last not
  above, so values outside the training range still move the encoding. Then a linear layer per
  feature and a ReLU (the paper's Q-LR).

The row layout comes from the spec: ``numeric`` scalar positions, ``onehot`` (start, width) groups
and ``categorical`` (position, cardinality) embedding indices. :class:`TabularLayout` reads it,
deriving what runs saved before these fields existed did not record. :class:`TabularTokens` maps a
row (B, F) to one d-wide token per column (FT-Transformer); :class:`TabularFeatures` to one flat
vector (MLP-like families).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..core.config import ModelConfig
from ..core.errors import ModelError
from ..data.spec import DataSpec

__all__ = ["FALLBACK_BINS", "FlatEmbeddingConfig", "LinearEmbedding", "NLinear", "NumericEmbeddingConfig",
           "PeriodicEmbedding", "PiecewiseLinearEmbedding", "PiecewiseLinearEncoding", "TabularFeatures",
           "TabularLayout", "TabularTokens", "categorical_width", "numeric_embedding"]

FALLBACK_BINS = 16  # uniform bins over [-3, 3] (scaled units) for runs whose spec records no quantile edges
FALLBACK_RANGE = (-3.0, 3.0)

NumericEmbedding = Literal["none", "periodic", "piecewise"]


def categorical_width(cardinality: int) -> int:
    """Width of an ``nn.Embedding`` of a categorical column in a flat vector: fast.ai's rule of thumb,
    about half the levels and at most 50."""
    return min(50, (cardinality + 1) // 2)


class NumericEmbeddingConfig(ModelConfig):
    """The numeric-embedding keys of the tabular families; each family sets its own default."""

    numeric_embedding: NumericEmbedding = Field("none", description="embedding of each numeric feature: none (the "
                                                "scalar itself), periodic (PLR) or piecewise (PLE on the data's "
                                                "quantile bins); Gorishniy et al. 2022")
    frequencies: int = Field(16, ge=1, description="periodic: trainable frequencies per feature (k)")
    frequency_scale: float = Field(0.1, gt=0, description="periodic: std of the initial frequencies (sigma); larger "
                                   "resolves finer detail, the paper tunes it in [0.01, 10]")
    periodic_lite: bool = Field(False, description="periodic: one linear layer shared by all features (PLR lite)")


class FlatEmbeddingConfig(NumericEmbeddingConfig):
    """The numeric-embedding keys of families that read one flat vector (:class:`TabularFeatures`)."""

    embedding_dim: int = Field(16, ge=1, description="periodic/piecewise: width of each numeric feature's embedding")


# -- the row layout ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TabularLayout:
    """Where each kind of column sits in a (F,) tabular row, read from a :class:`DataSpec`.

    ``bins`` holds, per entry of ``numeric``, strictly increasing edges (at least two): the spec's
    quantiles with duplicates merged, or :data:`FALLBACK_BINS` uniform bins over [-3, 3] when the spec
    records none for the feature (runs saved before it did).
    """

    width: int
    numeric: tuple[int, ...]
    onehot: tuple[tuple[int, int], ...]
    categorical: tuple[tuple[int, int], ...]
    bins: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, spec: DataSpec) -> TabularLayout:
        width = math.prod(spec.input_shape)
        onehot = tuple((int(s), int(w)) for s, w in spec.onehot)
        categorical = tuple((int(p), int(c)) for p, c in spec.categorical)
        taken: dict[int, str] = {}

        def take(pos: int, what: str) -> None:
            if pos in taken:
                raise ModelError(f"data spec: position {pos} is listed as {what} and as {taken[pos]}; the "
                                 f"preprocessing is inconsistent: train the run again to rebuild it")
            taken[pos] = what

        for start, size in onehot:
            for pos in range(start, start + size):
                take(pos, "onehot")
        for pos, cardinality in categorical:
            if cardinality < 1:
                raise ModelError(f"data spec: the embedding column at position {pos} has cardinality {cardinality}; "
                                 f"expected at least 1 level: train the run again to rebuild its preprocessing")
            take(pos, "categorical")
        # runs saved before the spec recorded ``numeric``: every other position is a scalar feature
        numeric = tuple(int(p) for p in spec.numeric) or tuple(p for p in range(width) if p not in taken)
        for pos in numeric:
            take(pos, "numeric")
        outside = sorted(p for p in taken if not 0 <= p < width)
        missing = sorted(set(range(width)) - set(taken))
        if outside or missing:
            what = f"positions {outside} lie outside" if outside else f"positions {missing[:10]} are in none of"
            raise ModelError(f"data spec: {what} the {width} input features (numeric, onehot, categorical); the "
                             f"preprocessing and the model disagree: train the run again to rebuild it")
        if spec.bins and len(spec.bins) != len(numeric):
            raise ModelError(f"data spec: bins has {len(spec.bins)} entries for {len(numeric)} numeric features; "
                             f"expected one list of edges per numeric feature: train the run again")
        bins = tuple(_edges(spec.bins[i] if spec.bins else [], pos) for i, pos in enumerate(numeric))
        return cls(width, numeric, onehot, categorical, bins)

    @property
    def columns(self) -> int:
        """Tokens a row becomes: one per numeric feature, one-hot group and embedding column."""
        return len(self.numeric) + len(self.onehot) + len(self.categorical)


def _edges(edges: list[float], position: int) -> tuple[float, ...]:
    if not edges:  # none recorded (older runs), or none for this feature
        low, high = FALLBACK_RANGE
        return tuple(torch.linspace(low, high, FALLBACK_BINS + 1).tolist())
    values = torch.tensor([float(e) for e in edges], dtype=torch.float64)
    if not torch.isfinite(values).all():
        raise ModelError(f"data spec: the bin edges of the numeric feature at position {position} are not finite; "
                         f"expected increasing numbers: train the run again to rebuild its preprocessing")
    # sorted and distinct in float32, the precision the model computes in (no bin of width 0); the
    # quantiles of a column with few distinct values repeat
    values = torch.unique(values.float()).double()
    if len(values) == 1:  # a constant training column: one bin around its value
        values = torch.cat([values - 1, values + 1])
    return tuple(values.tolist())


# -- per-feature layers --------------------------------------------------------------------------


class NLinear(nn.Module):
    """``n`` separate linear layers, one per feature: (B, n, in) -> (B, n, out)."""

    def __init__(self, n: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        bound = in_features ** -0.5  # nn.Linear's uniform range, per feature
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x.transpose(0, 1) @ self.weight).transpose(0, 1)  # (n, B, in) @ (n, in, out) -> (B, n, out)
        return y if self.bias is None else y + self.bias


class LinearEmbedding(nn.Module):
    """FT-Transformer's numeric tokens: ``x_j * w_j + b_j`` per feature, (B, n) -> (B, n, d)."""

    def __init__(self, n: int, d: int):
        super().__init__()
        bound = d ** -0.5
        self.weight = nn.Parameter(torch.empty(n, d).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, d).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., None] * self.weight + self.bias


class PeriodicEmbedding(nn.Module):
    """PLR: ``ReLU(Linear_j([cos(2π c_j x_j), sin(2π c_j x_j)]))`` per feature, (B, n) -> (B, n, d).

    ``frequencies`` k per feature start from N(0, ``sigma``) truncated at 3 sigma; ``lite``: one
    linear layer for all features."""

    def __init__(self, n: int, d: int, frequencies: int = 16, sigma: float = 0.1, lite: bool = False):
        super().__init__()
        self.frequencies = nn.Parameter(nn.init.trunc_normal_(torch.empty(n, frequencies), 0.0, sigma,
                                                              -3 * sigma, 3 * sigma))
        self.linear = nn.Linear(2 * frequencies, d) if lite else NLinear(n, 2 * frequencies, d)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * self.frequencies * x[..., None]  # (B, n, k)
        return self.activation(self.linear(torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)))


class PiecewiseLinearEncoding(nn.Module):
    """PLE (no parameters): (B, n) -> (B, n, max_bins), zeros past a feature's own bins.

    Bin t of a feature holds ``(x - b_t) / (b_{t+1} - b_t)`` clipped to [0, 1], except that the
    first bin has no lower clip and a feature's last bin no upper clip."""

    def __init__(self, bins: tuple[tuple[float, ...], ...]):
        super().__init__()
        most = max(len(b) for b in bins) - 1
        left = torch.zeros(len(bins), most)
        width = torch.ones(len(bins), most)  # padded bins: width 1, masked out below
        used = torch.zeros(len(bins), most, dtype=torch.bool)
        last = torch.zeros(len(bins), most, dtype=torch.bool)
        for j, edges in enumerate(bins):
            e = torch.tensor(edges, dtype=torch.float64)
            count = len(edges) - 1
            left[j, :count] = e[:-1].float()
            width[j, :count] = (e[1:] - e[:-1]).float()
            used[j, :count] = True
            last[j, count - 1] = True  # the last bin keeps growing past the last edge
        first = torch.zeros_like(used)
        first[:, 0] = True  # the first bin keeps falling below the first edge
        # not saved: rebuilt from the spec's bins, which every run stores with its model
        for name, value in (("left", left), ("width", width), ("used", used), ("first", first), ("last", last)):
            self.register_buffer(name, value, persistent=False)

    @property
    def max_bins(self) -> int:
        return self.left.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ratio = (x[..., None] - self.left) / self.width  # (B, n, max_bins)
        ratio = torch.where(self.first, ratio, ratio.clamp_min(0.0))
        ratio = torch.where(self.last, ratio, ratio.clamp_max(1.0))
        return torch.where(self.used, ratio, torch.zeros_like(ratio))


class PiecewiseLinearEmbedding(nn.Module):
    """PLE followed by a linear layer per feature and a ReLU (Q-LR): (B, n) -> (B, n, d)."""

    def __init__(self, bins: tuple[tuple[float, ...], ...], d: int):
        super().__init__()
        self.encoding = PiecewiseLinearEncoding(bins)
        self.linear = NLinear(len(bins), self.encoding.max_bins, d)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(self.encoding(x)))


def numeric_embedding(kind: str, layout: TabularLayout, d: int, config: NumericEmbeddingConfig | None = None
                      ) -> nn.Module:
    """The embedding of the layout's numeric features, (B, n) -> (B, n, d): ``linear`` (FT tokens),
    ``periodic`` or ``piecewise``."""
    config = config if config is not None else NumericEmbeddingConfig()
    n = len(layout.numeric)
    if kind == "periodic":
        return PeriodicEmbedding(n, d, config.frequencies, config.frequency_scale, config.periodic_lite)
    if kind == "piecewise":
        return PiecewiseLinearEmbedding(layout.bins, d)
    if kind == "linear":
        return LinearEmbedding(n, d)
    raise ModelError(f"model.numeric_embedding: unknown value {kind!r}; choose one of: none, periodic, piecewise")


def _index(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


# -- rows to tokens or a flat vector -------------------------------------------------------------


class TabularTokens(nn.Module):
    """A tabular row (B, F) -> one d-wide token per column (B, columns, d), in the order: numeric
    features, one-hot groups, embedding columns (FT-Transformer's feature tokenizer).

    Numeric features go through ``numeric`` (``none``: ``x w_j + b_j``). A one-hot group of width w
    goes through its own Linear(w -> d): on a one-hot vector, a row of its weight plus its bias, an
    embedding lookup with a per-column bias. An embedding column is an ``nn.Embedding`` lookup plus
    a per-column bias. Out-of-range codes are clamped into the column's levels.
    """

    def __init__(self, spec: DataSpec, d: int, numeric: NumericEmbedding = "none",
                 config: NumericEmbeddingConfig | None = None):
        super().__init__()
        layout = TabularLayout.of(spec)
        self.layout = layout
        self.register_buffer("numeric_index", _index(list(layout.numeric)), persistent=False)
        self.numeric = (numeric_embedding("linear" if numeric == "none" else numeric, layout, d, config)
                        if layout.numeric else None)
        self.onehot = None
        if layout.onehot:
            # every group padded to the widest; the padding reads position F, a zero appended to the row
            widest = max(w for _, w in layout.onehot)
            index = [[s + i if i < w else layout.width for i in range(widest)] for s, w in layout.onehot]
            self.register_buffer("onehot_index", torch.tensor(index, dtype=torch.long).flatten(), persistent=False)
            self.onehot = NLinear(len(layout.onehot), widest, d)
        self.categorical = None
        if layout.categorical:
            cards = [c for _, c in layout.categorical]
            offsets = torch.tensor([0] + cards[:-1], dtype=torch.long).cumsum(0)
            self.register_buffer("categorical_index", _index([p for p, _ in layout.categorical]), persistent=False)
            self.register_buffer("offsets", offsets, persistent=False)
            self.register_buffer("top", torch.tensor(cards, dtype=torch.long) - 1, persistent=False)
            bound = d ** -0.5
            self.categorical = nn.Embedding(sum(cards), d)
            nn.init.uniform_(self.categorical.weight, -bound, bound)
            self.categorical_bias = nn.Parameter(torch.empty(len(cards), d).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        tokens = []
        if self.numeric is not None:
            tokens.append(self.numeric(x.index_select(1, self.numeric_index)))  # (B, n, d)
        if self.onehot is not None:
            padded = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)  # (B, F + 1)
            groups = padded.index_select(1, self.onehot_index).reshape(x.shape[0], self.onehot.weight.shape[0], -1)
            tokens.append(self.onehot(groups))  # (B, groups, d)
        if self.categorical is not None:
            codes = x.index_select(1, self.categorical_index).long()
            codes = torch.minimum(torch.maximum(codes, torch.zeros_like(codes)), self.top)  # (B, c)
            tokens.append(self.categorical(codes + self.offsets) + self.categorical_bias)  # (B, c, d)
        return torch.cat(tokens, dim=1)  # (B, columns, d)


class TabularFeatures(nn.Module):
    """A tabular row (B, F) -> one flat vector (B, out_features) for MLP-like families: the numeric
    features (scalars, or embedded by ``numeric`` and flattened), then the one-hot groups as they
    are (the next linear layer embeds them), then the embedding columns looked up.

    ``sections``: the width each column takes in the output, in order (TabM initialises its first
    adapter per column).
    """

    def __init__(self, spec: DataSpec, numeric: NumericEmbedding = "none",
                 config: FlatEmbeddingConfig | None = None):
        super().__init__()
        layout = TabularLayout.of(spec)
        self.layout = layout
        self.register_buffer("numeric_index", _index(list(layout.numeric)), persistent=False)
        self.register_buffer("onehot_index", _index([s + i for s, w in layout.onehot for i in range(w)]),
                             persistent=False)
        self.slots = [p for p, _ in layout.categorical]
        config = config if config is not None else FlatEmbeddingConfig()
        embedded = numeric != "none" and bool(layout.numeric)
        self.numeric = numeric_embedding(numeric, layout, config.embedding_dim, config) if embedded else None
        per_numeric = config.embedding_dim if embedded else 1
        self.embeddings = nn.ModuleList(nn.Embedding(c, categorical_width(c)) for _, c in layout.categorical)
        self.sections = ([per_numeric] * len(layout.numeric) + [w for _, w in layout.onehot]
                         + [e.embedding_dim for e in self.embeddings])
        self.out_features = sum(self.sections)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        parts = []
        if len(self.layout.numeric):
            numeric = x.index_select(1, self.numeric_index)  # (B, n)
            parts.append(numeric if self.numeric is None else self.numeric(numeric).flatten(1))  # (B, n * d)
        if len(self.layout.onehot):
            parts.append(x.index_select(1, self.onehot_index))  # (B, sum of group widths)
        for pos, emb in zip(self.slots, self.embeddings):
            parts.append(emb(x[:, pos].long().clamp(0, emb.num_embeddings - 1)))  # (B, width of the column)
        return torch.cat(parts, dim=1)  # (B, out_features)
