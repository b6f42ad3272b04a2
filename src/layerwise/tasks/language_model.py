"""Causal language modelling: predict the next token at every position (Bengio et al. 2003, "A Neural
Probabilistic Language Model"; in the GPT form of Radford et al. 2018/2019, as in nanoGPT).

The model reads a block of token ids ``x`` (B, T) and scores, at every position t, the token that
follows: ``logits = model.forward_head(model.forward_sequence(x))`` (B, T, V), trained with the
cross-entropy over all B * T positions. Only families that read left to right can do this (a
bidirectional RNN or an encoder transformer would see the very token it must predict), so the task
checks that the model can run step by step (``init_state`` / ``step``) before training.

Metrics: ``loss`` (mean negative log-likelihood, nats per token), ``perplexity`` (exp of the loss),
``bits_per_token`` (loss / ln 2), next-token ``accuracy``, and ``bits_per_char``: for a character
tokenizer the same number as bits per token, for BPE the summed NLL divided by the number of
characters the evaluated tokens decode to (each token's character length is looked up once).

At the end of every epoch a short sample is generated (fixed seed, temperature 0.8) and appended to
``samples.jsonl`` in the run directory; the report shows them under "Generated samples".
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..core.callback import Callback
from ..core.sections import register_section
from ..ops.decoding import check_causal
from . import Task, register_task
from .evaluation import EvalResult

__all__ = ["LanguageModel", "LanguageModelEvaluator", "SampleText"]

LN2 = math.log(2.0)
SAMPLE_TOKENS_CHAR = 200  # a character model's per-epoch sample: ~200 characters
SAMPLE_TOKENS_BPE = 60  # a BPE model's: ~200 characters at ~3-4 characters per token
SAMPLE_TEMPERATURE = 0.8
SAMPLE_SEED = 0


def _perplexity(nats: float) -> float:
    return math.exp(nats) if nats < 700 else float("inf")


def _char_lengths(tokenizer: Any) -> torch.Tensor | None:
    """Characters each token id decodes to: (V,) floats; None for a character tokenizer (all 1) or none."""
    if tokenizer is None or not hasattr(tokenizer, "decode") or getattr(tokenizer, "level", "char") == "char":
        return None
    return torch.tensor([len(tokenizer.decode([i])) for i in range(int(tokenizer.vocab_size))], dtype=torch.float64)


class LanguageModelEvaluator:
    """Streams over batches of next-token logits: sums of NLL, correct predictions, tokens, characters.

    Each batch's logits (B, T, V) are reduced to four numbers and dropped, so memory does not grow
    with the data. ``compute`` turns the sums into loss, perplexity, bits per token/char, accuracy.
    """

    def __init__(self, char_level: bool, char_lengths: torch.Tensor | None = None):
        self.char_level = char_level
        self.char_lengths = char_lengths  # (V,) characters per token (BPE), else None
        self.nll = 0.0
        self.correct = 0
        self.tokens = 0
        self.chars = 0.0

    def update(self, outputs: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> None:
        logits = outputs.detach().float().flatten(0, -2)  # (B * T, V)
        target = y.flatten()
        self.nll += float(F.cross_entropy(logits, target, reduction="sum"))
        self.correct += int((logits.argmax(-1) == target).sum())
        self.tokens += target.numel()
        if self.char_lengths is not None:
            self.chars += float(self.char_lengths[target.cpu()].sum())

    def compute(self, class_names=None) -> EvalResult:
        loss = self.nll / max(self.tokens, 1)
        metrics = {"loss": loss, "perplexity": _perplexity(loss), "bits_per_token": loss / LN2,
                   "accuracy": self.correct / max(self.tokens, 1)}
        if self.char_level:
            metrics["bits_per_char"] = loss / LN2
        elif self.chars > 0:
            metrics["bits_per_char"] = self.nll / LN2 / self.chars
        return EvalResult(metrics, {"tokens": self.tokens})


@register_task("language_model")
class LanguageModel(Task):
    """Next-token prediction at every position; perplexity is the number to watch (lower is better)."""

    target = "token"
    main_metric = "perplexity"
    # every position predicts its next token, so nothing is pooled; "last" keeps an encoder's CLS
    # token (which a causal model cannot use) out of the way
    model_defaults: ClassVar[dict[str, Any]] = {"causal": True, "pooling": "last"}
    greater_is_better: ClassVar[dict[str, bool]] = {"accuracy": True}

    def __init__(self, spec, train_cfg, preprocessing, train_labels=None, config=None):
        super().__init__(spec, train_cfg, preprocessing, train_labels, config)
        self.tokenizer = getattr(preprocessing, "inputs", None)
        self._char_lengths: torch.Tensor | None = None

    @property
    def char_level(self) -> bool:
        return getattr(self.tokenizer, "level", None) == "char"

    # -- optimization ---------------------------------------------------------------------------
    def check_model(self, model) -> None:
        """Refuse models that cannot read left to right (one line): they would learn to copy their input."""
        check_causal(model)

    def configure_optimizers(self, model):
        self.check_model(model)  # before the first batch, whoever builds the trainer
        return super().configure_optimizers(model)

    def logits(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, V) next-token logits."""
        if not hasattr(model, "forward_sequence"):
            check_causal(model)
        return model.forward_head(model.forward_sequence(x))

    def loss(self, outputs, y):
        # mean over every position of every block; the count is the number of tokens
        return F.cross_entropy(outputs.flatten(0, -2).float(), y.flatten()), y.numel()

    def training_step(self, model, batch, ctx):
        from . import StepOutput

        x, y = batch
        logits = self.logits(model, x)  # (B, T, V); not returned: B * T * V floats per step
        loss, count = self.loss(logits, y)
        detached = logits.detach()
        sums = {"nll": loss.detach() * count, "correct": (detached.argmax(-1) == y).sum(),
                "tokens": torch.ones((), device=y.device).mul_(count)}
        return StepOutput(loss, count, None, sums)

    def evaluation_step(self, model, batch):
        from . import StepOutput

        x, y = batch
        logits = self.logits(model, x)
        loss, count = self.loss(logits, y)
        return StepOutput(loss, count, logits)  # the evaluator reduces them to sums and drops them

    def summarize(self, sums, count):
        tokens = sums.get("tokens", 0.0)
        if not tokens:
            return {}
        return {"perplexity": _perplexity(sums["nll"] / tokens), "accuracy": sums["correct"] / tokens}

    def callbacks(self, run_dir):
        if self.tokenizer is None or not hasattr(self.tokenizer, "decode"):
            return []  # token ids without a tokenizer: nothing to print
        return [SampleText(Path(run_dir) / "samples.jsonl", self.tokenizer)]

    # -- inference --------------------------------------------------------------------------------
    def predict(self, outputs):
        """``outputs``: logits (B, V) (the pooled last position) or (B, T, V): the next token and its probabilities."""
        proba = torch.softmax(outputs.float(), dim=-1)
        return {"label": proba.argmax(-1), "proba": proba}

    def evaluator(self, eval_cfg):
        if self._char_lengths is None and not self.char_level:
            self._char_lengths = _char_lengths(self.tokenizer)  # once per task: V decodes
        return LanguageModelEvaluator(self.char_level, self._char_lengths)


class SampleText(Callback):
    """After each epoch, generate a short sample with a fixed seed and append it to ``samples.jsonl``."""

    def __init__(self, path: Path, tokenizer, tokens: int | None = None, temperature: float = SAMPLE_TEMPERATURE,
                 seed: int = SAMPLE_SEED):
        self.path = Path(path)
        self.tokenizer = tokenizer
        char = getattr(tokenizer, "level", "char") == "char"
        self.tokens = tokens or (SAMPLE_TOKENS_CHAR if char else SAMPLE_TOKENS_BPE)
        self.temperature = temperature
        self.seed = seed

    def on_epoch_end(self, trainer, logs):
        from ..ops.decoding import generate_ids, start_ids

        # its own generator: sampling never moves the training RNG (resumed runs stay exact)
        gen = torch.Generator().manual_seed(self.seed)
        ids = generate_ids(trainer.model, start_ids(self.tokenizer, ""), self.tokens, self.temperature,
                           generator=gen)
        line = json.dumps({"epoch": int(logs["epoch"]), "step": int(logs.get("step", 0)),
                           "text": self.tokenizer.decode(ids)})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def read_samples(run_dir: Path) -> list[dict[str, Any]]:
    """The samples a language-model run wrote per epoch (empty when there are none)."""
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@register_section("language_model_samples")
def _samples_section(run):
    if run.config.task != "language_model":
        return None
    samples = read_samples(run.path)
    if not samples:
        return None
    parts = [f"<p>Sampled after each epoch from a newline, temperature {SAMPLE_TEMPERATURE}, seed {SAMPLE_SEED}.</p>"]
    for sample in samples:
        parts.append(f"<h3>epoch {int(sample['epoch'])}</h3><pre>{html.escape(sample['text'])}</pre>")
    return "Generated samples", "\n".join(parts)
