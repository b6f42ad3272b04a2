"""Text generation from a language model, one token per step (autoregressive sampling).

Every causal family runs step by step through ``init_state`` / ``step``: recurrent families
(rnn, lstm, gru, mingru, minlstm, rwkv) carry a fixed-size state, a causal transformer a KV cache
(the keys and values of every position seen). Each new token therefore costs one step; the prefix
is never recomputed. The prompt is fed the same way, one step per token.

A transformer knows positions up to ``model.max_len`` only. When its cache is full, generation
slides the window: the cache is dropped and the last ``max_len // 2`` tokens are fed again, so the
model keeps at least half a window of context and the re-feeding costs about one extra step per
new token on average.

Sampling: logits divided by ``temperature`` (0: always the most likely token), optionally cut to the
``top_k`` most likely, then drawn with a seeded ``torch.Generator`` on the CPU (same seed, same
text, whatever the device).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.errors import ModelError
from ..models import FAMILIES
from ..models.abilities import Stepper, has_ability

__all__ = ["causal_families", "check_causal", "generate_ids", "sample_next", "start_ids"]


def start_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's ids; an empty prompt starts from a newline when the vocabulary has one, else token 0."""
    if prompt:
        ids = list(tokenizer.encode(prompt))
        if ids:
            return ids
    newline = list(tokenizer.encode("\n"))
    return newline if len(newline) == 1 and tokenizer.decode(newline) == "\n" else [0]


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    """One token id from (V,) logits: greedy at temperature 0, else a seeded draw (top-k optional)."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.detach().float().cpu() / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_ids(model: torch.nn.Module, prompt_ids: list[int], n: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> list[int]:
    """``n`` new token ids continuing ``prompt_ids`` (at least one id), one ``model.step`` per token.

    >>> ids = generate_ids(model, [0], 20, temperature=0)   # greedy  # doctest: +SKIP
    """
    check_causal(model, "generation")
    if not prompt_ids:
        raise ValueError("generate_ids needs at least one prompt id to start from")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # a transformer's positions end at max_len: the window slides (see the module docstring)
    limit = getattr(model.config, "max_len", None) if hasattr(model, "config") else None

    def feed(tokens: list[int]):
        state = model.init_state(1)
        hidden = None
        for token in tokens:
            hidden, state = model.step(torch.tensor([token], device=device), state)
        return hidden, state

    try:
        history = list(prompt_ids)
        hidden, state = feed(history[-limit:] if limit else history)
        new: list[int] = []
        for i in range(n):
            token = sample_next(model.forward_head(hidden)[0], temperature, top_k, generator)
            new.append(token)
            history.append(token)
            if i == n - 1:
                break
            if limit and getattr(state, "position", 0) >= limit:
                hidden, state = feed(history[-max(1, limit // 2):])
            else:
                hidden, state = model.step(torch.tensor([token], device=device), state)
    finally:
        model.train(was_training)
    return new


def causal_families() -> list[str]:
    """The registered families that can be language models: token inputs, ``forward_sequence`` and ``step``."""
    return [name for name, cls in FAMILIES.items() if "tokens" in cls.accepts and has_ability(cls, Stepper)]


def check_causal(model: torch.nn.Module, what: str = "task 'language_model'") -> None:
    """Raise a one-line :class:`ModelError` unless ``model`` can read a sequence left to right."""
    if not has_ability(model, Stepper):
        family = getattr(getattr(model, "config", None), "family", type(model).__name__)
        raise ModelError(f"model.family: {what} needs a model that reads token by token (forward_sequence and step); "
                         f"'{family}' has none; use one of: {', '.join(causal_families())}")
    try:
        model.init_state(1)  # bidirectional RNNs and encoder transformers refuse to run step by step
    except ModelError as exc:
        raise ModelError(f"{exc} ({what} needs a causal model: one that does not see the token it predicts)") from None
