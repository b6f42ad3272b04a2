"""RWKV (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era"), version 4.

Each block is a pre-LayerNorm residual pair: *time mixing*, an attention-like weighted average of
past values whose weights decay with distance (per-channel decay ``w``, plus a bonus ``u`` for the
current token), and *channel mixing*, a squared-ReLU feed-forward layer gated by a receptance.
Both mixers see the current token interpolated with the previous one ("token shift").

The weighted average (the WKV) has two equal forms:

* a parallel form for training over a whole sequence (:func:`wkv_parallel`): chunks of
  ``CHUNK`` steps are computed at once as a masked (chunk x chunk) weight matrix; a state carried
  between chunks joins them, so memory grows with T * CHUNK rather than T * T;
* a recurrent form for generation (:func:`wkv_step`) with O(1) state per layer.

Both keep exponentials bounded with the running-max trick of the RWKV-4 reference code: numerator
and denominator are stored divided by ``exp(p)``, with ``p`` the largest exponent seen so far.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..core.config import ModelConfig
from . import LayerwiseModel, register_family
from .layers import SequenceInput, pool_sequence

CHUNK = 32  # steps computed at once by the parallel WKV; memory per layer ~ B * T * CHUNK * width
NEG = -1e38  # "log of zero" for the running max: finite, so no inf - inf = nan


# -- the WKV, in its two forms -------------------------------------------------------------------


def wkv_step(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             num: torch.Tensor, den: torch.Tensor, mx: torch.Tensor):
    """One step of the WKV recurrence; all tensors (B, C) but ``w``, ``u`` (C,).

    The state before step t is ``num * exp(mx) = sum_{i<t} exp(k_i - (t-1-i) w) v_i`` (and ``den``
    likewise without ``v_i``). Returns wkv_t and the state after step t.
    """
    # output: past terms plus the current token with its bonus u
    now = u + k
    top = torch.maximum(mx, now)
    e_past, e_now = torch.exp(mx - top), torch.exp(now - top)
    wkv = (e_past * num + e_now * v) / (e_past * den + e_now)
    # state: decay the past by exp(-w) and add the current token (without the bonus)
    decayed = mx - w
    top = torch.maximum(decayed, k)
    e_past, e_now = torch.exp(decayed - top), torch.exp(k - top)
    return wkv, e_past * num + e_now * v, e_past * den + e_now, top


def wkv_parallel(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int = CHUNK):
    """The WKV of every step: k, v (B, T, C), w, u (C,) -> (B, T, C), and the state after the last step.

    Inside a chunk, position j sees token i < j with log-weight ``k_i - (j-1-i) w``, itself with
    ``u + k_j``, and the state carried from earlier chunks with ``mx - j w``; all are shifted by
    their maximum before ``exp``, so nothing overflows however long the sequence is.
    """
    B, T, C = k.shape
    num = k.new_zeros(B, C)
    den = k.new_zeros(B, C)
    mx = k.new_full((B, C), NEG)
    outputs = []
    for start in range(0, T, chunk):
        kc, vc = k[:, start:start + chunk], v[:, start:start + chunk]  # (B, L, C)
        L = kc.shape[1]
        pos = torch.arange(L, device=k.device)
        j, i = pos[:, None], pos[None, :]  # query position j, key position i: (L, L)
        distance = (j - 1 - i).clamp(min=0).to(k.dtype)[None, :, :, None]  # (1, L, L, 1)
        past = kc[:, None, :, :] - distance * w  # (B, L_j, L_i, C)
        logw = torch.where((j == i)[None, :, :, None], (u + kc)[:, :, None, :], past)
        logw = logw.masked_fill((i > j)[None, :, :, None], float("-inf"))  # causal: no future tokens
        carried = mx[:, None, :] - pos[None, :, None].to(k.dtype) * w  # (B, L, C): the earlier chunks
        top = torch.maximum(logw.amax(dim=2), carried)  # (B, L, C)
        e = torch.exp(logw - top[:, :, None, :])  # (B, L_j, L_i, C)
        e_carried = torch.exp(carried - top)  # (B, L, C)
        numer = e_carried * num[:, None] + torch.einsum("bjic,bic->bjc", e, vc)
        denom = e_carried * den[:, None] + e.sum(dim=2)
        outputs.append(numer / denom)
        # carry the state past this chunk: decay it by L steps and add the chunk's tokens
        into_next = kc - (L - 1 - pos).to(k.dtype)[None, :, None] * w  # (B, L, C)
        decayed = mx - L * w  # (B, C)
        top = torch.maximum(into_next.amax(dim=1), decayed)
        e_chunk, e_old = torch.exp(into_next - top[:, None]), torch.exp(decayed - top)
        num = e_old * num + (e_chunk * vc).sum(dim=1)
        den = e_old * den + e_chunk.sum(dim=1)
        mx = top
    return torch.cat(outputs, dim=1), (num, den, mx)


# -- blocks ------------------------------------------------------------------------------------


def token_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, T, C) -> the previous step's x at each position, zeros before the first."""
    return F.pad(x, (0, 0, 1, -1))


def _mix_init(width: int, layer: int, layers: int, power_scale: float = 1.0) -> torch.Tensor:
    # RWKV-4's initialization: deeper layers and later channels lean more on the current token
    ratio = 1.0 - layer / layers
    return torch.pow(torch.arange(width) / width, ratio * power_scale)


class TimeMix(nn.Module):
    """Token shift, receptance/key/value projections, and the WKV average gated by sigmoid(r)."""

    def __init__(self, width: int, layer: int, layers: int):
        super().__init__()
        # per-channel decay w = exp(time_decay) from ~exp(-5) (long memory) to ~exp(3) (short)
        speed = torch.arange(width) / max(width - 1, 1)
        self.time_decay = nn.Parameter(-5 + 8 * speed ** (0.7 + 1.3 * layer / max(layers - 1, 1)))
        zigzag = torch.tensor([(c % 3 - 1) * 0.5 for c in range(width)])
        self.time_first = nn.Parameter(math.log(0.3) + zigzag)  # the bonus u of the current token
        self.mix_k = nn.Parameter(_mix_init(width, layer, layers))
        self.mix_v = nn.Parameter(_mix_init(width, layer, layers) + 0.3 * (1 - layer / layers))
        self.mix_r = nn.Parameter(_mix_init(width, layer, layers, 0.5))
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width, bias=False)
        self.receptance = nn.Linear(width, width, bias=False)
        self.output = nn.Linear(width, width, bias=False)

    def _project(self, x: torch.Tensor, prev: torch.Tensor):
        k = self.key(x * self.mix_k + prev * (1 - self.mix_k))
        v = self.value(x * self.mix_v + prev * (1 - self.mix_v))
        r = torch.sigmoid(self.receptance(x * self.mix_r + prev * (1 - self.mix_r)))
        return k.float(), v.float(), r  # the WKV runs in float32 even under autocast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, v, r = self._project(x, token_shift(x))  # (B, T, C) each
        wkv, _ = wkv_parallel(torch.exp(self.time_decay.float()), self.time_first.float(), k, v)
        return self.output(r * wkv.to(r.dtype))  # (B, T, C)

    def step(self, x: torch.Tensor, prev: torch.Tensor, num, den, mx):
        """x, prev: (B, C) -> output (B, C) and the new (num, den, mx)."""
        k, v, r = self._project(x, prev)
        wkv, num, den, mx = wkv_step(torch.exp(self.time_decay.float()), self.time_first.float(), k, v, num, den, mx)
        return self.output(r * wkv.to(r.dtype)), num, den, mx


class ChannelMix(nn.Module):
    """Token shift, a squared-ReLU hidden layer, and a sigmoid receptance gate."""

    def __init__(self, width: int, hidden: int, layer: int, layers: int):
        super().__init__()
        self.mix_k = nn.Parameter(_mix_init(width, layer, layers))
        self.mix_r = nn.Parameter(_mix_init(width, layer, layers))
        self.key = nn.Linear(width, hidden, bias=False)
        self.value = nn.Linear(hidden, width, bias=False)
        self.receptance = nn.Linear(width, width, bias=False)

    def mix(self, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        k = torch.square(torch.relu(self.key(x * self.mix_k + prev * (1 - self.mix_k))))  # (..., hidden)
        return torch.sigmoid(self.receptance(x * self.mix_r + prev * (1 - self.mix_r))) * self.value(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x, token_shift(x))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + time_mix(ln(x)), then x + channel_mix(ln(x))."""

    def __init__(self, width: int, hidden: int, layer: int, layers: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.ln2 = nn.LayerNorm(width)
        self.att = TimeMix(width, layer, layers)
        self.ffn = ChannelMix(width, hidden, layer, layers)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.att(self.ln1(x)))
        return x + self.drop(self.ffn(self.ln2(x)))

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C), state (5, B, C) = [time-mix previous x, num, den, max, channel-mix previous x]."""
        a = self.ln1(x)
        out, num, den, mx = self.att.step(a, state[0], state[1], state[2], state[3])
        x = x + self.drop(out)
        f = self.ln2(x)
        x = x + self.drop(self.ffn.mix(f, state[4]))
        return x, torch.stack([a, num.to(a.dtype), den.to(a.dtype), mx.to(a.dtype), f])


# -- the model ---------------------------------------------------------------------------------


class RWKVConfig(ModelConfig):
    family: Literal["rwkv"] = "rwkv"
    width: int = Field(128, ge=1, description="model width (d_model) of the embedding and every block")
    layers: int = Field(2, ge=1, description="RWKV blocks")
    ffn_mult: int = Field(4, ge=1, description="channel-mixing hidden width, as a multiple of width")
    pooling: Literal["last", "mean"] = Field("last", description="final position, or the mean over positions")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on each residual branch")


@register_family("rwkv")
class RWKV(LayerwiseModel):
    """RWKV-4 blocks (time mixing with decaying WKV attention, channel mixing): an RNN trained in parallel."""

    accepts = frozenset({"sequence", "tokens"})
    Config = RWKVConfig

    def __init__(self, config: RWKVConfig, spec):
        super().__init__(config, spec)
        width = config.width
        self.inputs = SequenceInput(spec, width)
        self.ln_in = nn.LayerNorm(width)  # RWKV normalizes the embedding before the first block
        hidden = width * config.ffn_mult
        self.blocks = nn.ModuleList(Block(width, hidden, layer, config.layers, config.dropout)
                                    for layer in range(config.layers))
        self.ln_out = nn.LayerNorm(width)
        self.head = nn.Linear(width, spec.num_outputs)

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Every position's output: (B, T) ids or (B, T, F) features -> (B, T, width)."""
        h = self.ln_in(self.inputs(x))  # (B, T, width)
        for block in self.blocks:
            h = block(h)
        return self.ln_out(h)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return pool_sequence(self.forward_sequence(x), self.config.pooling)  # (B, width)

    # -- one step at a time (generation) ----------------------------------------------------------
    def init_state(self, batch_size: int) -> torch.Tensor:
        """The state before the first step: (layers, 5, B, width), see :meth:`Block.step`."""
        weight = self.head.weight
        state = torch.zeros(len(self.blocks), 5, batch_size, self.config.width, device=weight.device,
                            dtype=weight.dtype)
        state[:, 3] = NEG  # the running max starts at "log of zero"
        return state

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: ``x_t`` is (B, F) features or (B,) token ids; returns (B, width) and the new state.

        >>> state = model.init_state(4)                          # doctest: +SKIP
        >>> for t in range(T): h, state = model.step(x[:, t], state)  # doctest: +SKIP
        """
        h = self.ln_in(self.inputs(x_t))  # (B, width)
        new = []
        for block, layer_state in zip(self.blocks, state):
            h, layer_state = block.step(h, layer_state)
            new.append(layer_state)
        return self.ln_out(h), torch.stack(new)
