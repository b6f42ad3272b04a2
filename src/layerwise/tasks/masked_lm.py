"""Masked language modelling (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding"): hide some tokens of a text and predict them from both
sides.

``mask_ratio`` (15%) of the non-padding positions of each block are chosen; of those, 80% read a
mask token, 10% a random token and 10% stay as they are (so the model cannot tell which positions
it is asked about from the input alone). The model's ``forward_sequence`` (an encoder transformer:
``causal: false``) feeds an MLM head (linear, GELU, LayerNorm, then the vocabulary; the run's
``pretext`` module), and the loss is the cross-entropy over **chosen positions only**.

Our vocabularies have no ``[MASK]`` entry: the mask token is one the training text never contains,
``<unk>`` for a character tokenizer (every character of the training text is in the vocabulary) or
``<pad>`` for byte-level BPE, which the model then learns as a mask.

Metrics: ``loss`` (nats per chosen token) and ``masked_accuracy``. Fine-tuning the encoder on
labelled texts (``model.init_from``) needs the same tokenizer: the same text source and tokenizer
settings, so that the vocabulary and the embedding table match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..core.config import TaskConfig
from ..core.errors import ConfigError
from . import StepOutput, Task, register_task
from .pretext import EVAL_SEED, MeanEvaluator, predict_error, view_seed

__all__ = ["MaskedLM", "MaskedLMConfig", "mask_tokens"]

IGNORE = -100  # cross-entropy's ignore_index: positions that were not chosen


class MaskedLMConfig(TaskConfig):
    """``task: {name: masked_lm, mask_ratio: 0.15}``."""

    mask_ratio: float = Field(0.15, gt=0, lt=1, description="share of each block's (non-padding) tokens the model "
                              "must predict")


def mask_tokens(x: torch.Tensor, ratio: float, mask_id: int, vocab: int, pad_id: int | None,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of ids (B, T): returns (inputs, labels); labels hold the original id at
    chosen positions and ``IGNORE`` elsewhere. At least one position per block is chosen."""
    scores = torch.rand(x.shape, generator=generator).to(x.device)
    if pad_id is not None:
        scores = scores.masked_fill(x == pad_id, 2.0)  # padding is never chosen
    chosen = scores < ratio
    first = scores.argmin(dim=1, keepdim=True)  # a block with nothing chosen gets its best-scored position
    chosen = chosen.scatter(1, first, torch.ones_like(first, dtype=torch.bool)) & (scores <= 1)
    action = torch.rand(x.shape, generator=generator).to(x.device)
    random_ids = torch.randint(0, vocab, x.shape, generator=generator).to(x.device)
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(x, mask_id), x)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, x, torch.full_like(x, IGNORE))


@register_task("masked_lm")
class MaskedLM(Task):
    target = None  # a language-model block or a labelled text: the labels are never read
    predicts_target = False
    embeds = True
    main_metric = "masked_accuracy"
    greater_is_better = {"masked_accuracy": True}
    model_defaults = {"causal": False}
    Config = MaskedLMConfig

    def __init__(self, spec, train_cfg, preprocessing, train_labels=None, config=None):
        super().__init__(spec, train_cfg, preprocessing, train_labels, config)
        if spec.kind != "tokens" or not spec.vocab_size:
            raise ConfigError(f"task masked_lm: masks token ids, and this data gives {spec.kind} inputs; use "
                              f"data.source: text (or task: masked_autoencoder for images and tables)")
        tokenizer = getattr(preprocessing, "inputs", None)
        unk = getattr(tokenizer, "unk_id", None)
        self.pad_id = getattr(tokenizer, "pad_id", 0)
        self.mask_id = unk if unk is not None else self.pad_id

    def check_model(self, model) -> None:
        if not callable(getattr(model, "forward_sequence", None)):
            raise ConfigError(f"task masked_lm: predicts every position, and {type(model).__name__} has no "
                              f"forward_sequence; use model.family: transformer")
        if getattr(getattr(model, "config", None), "causal", False):
            raise ConfigError("model.causal: a masked language model reads both sides of a hidden token; set "
                              "model.causal: false")

    def extend_model(self, model) -> None:
        width = int(model.forward_sequence(self.spec.example_input(1)).shape[-1])
        model.pretext = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width),
                                      nn.Linear(width, int(self.spec.vocab_size)))

    def _step(self, model, x, seed):
        """(loss over chosen positions, how many were chosen, whether each chosen one was predicted right)."""
        generator = torch.Generator().manual_seed(seed)
        pad = self.pad_id if self.mask_id != self.pad_id else None  # BPE: <pad> is the mask, padded blocks are rare
        inputs, labels = mask_tokens(x, self.config.mask_ratio, self.mask_id, int(self.spec.vocab_size), pad,
                                     generator)
        logits = model.pretext(model.forward_sequence(inputs)).float()  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        chosen = labels != IGNORE
        hits = logits.detach().argmax(-1)[chosen] == labels[chosen]
        return loss, chosen.sum(), hits

    def training_step(self, model, batch, ctx) -> StepOutput:
        x, _ = batch
        loss, chosen, hits = self._step(model, x, view_seed(self.train_cfg, ctx))
        return StepOutput(loss, len(x), None, {"masked_accuracy": hits.float().sum() / chosen.clamp(min=1) * len(x)})

    def evaluation_step(self, model, batch) -> StepOutput:
        x, _ = batch
        loss, _, hits = self._step(model, x, EVAL_SEED)
        return StepOutput(loss, len(x), hits)

    def predict(self, outputs):
        raise predict_error("masked_lm")

    def evaluator(self, eval_cfg):
        return MeanEvaluator("masked_accuracy", "tokens")
