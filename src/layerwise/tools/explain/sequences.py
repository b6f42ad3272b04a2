"""Explanations of text (token ids) and float-sequence runs: per-token and per-time-step attributions.

Token ids are not differentiable, so every method works on the token *embeddings*, the output of
the model's embedding layer (the shared ``SequenceInput`` of the transformer, rnn, lstm, gru,
mingru, minlstm and rwkv families): :func:`token_forward` runs the model from embeddings (B, T, D)
by replacing the embedding layer's output with a forward hook, so no family needs a special case.
"Removing" a token means giving it the embedding of the padding token (``<pad>``, the id the
text preprocessor pads with), which is also the integrated-gradients baseline: the embedding of an
all-padding text. A token's score is the sum of its attribution over the embedding dimension;
for ``saliency`` that is gradient x (embedding - pad embedding), the first-order change when the
token is removed (the bare gradient sums to about zero over the embedding of a layer-normalised
model, since LayerNorm ignores the mean direction).
KernelSHAP, LIME and occlusion switch whole tokens on and off (one feature per position).

A language model (a next-token target) is explained for the token after the last position.

Float sequences (B, T, F) are attributed directly; the baseline is 0, the training mean of every
standardized feature, and the perturbation methods remove whole time steps.

``attention`` (the last layer's attention, heads averaged) and ``attention_rollout`` (Abnar &
Zuidema 2020, see :mod:`layerwise.tools.explain.attention`) take the row of the position that feeds the
prediction (CLS token, last position, or the mean of the rows for mean pooling).

Outputs: ``tokens.html`` (each token highlighted red / blue by its signed score, the score in the
tooltip, one row per method), or one heat-map PNG per method for float sequences (time on x,
features on y, above the series), and the attention pictures.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...core.errors import ConfigError
from ...data.kinds import input_kind
from .attention import (
    _attention_figures,
    attention_maps,
    check_attention,
    prediction_row,
    rollout,
    save_figure,
    summarize_attention,
)
from .methods import ATTENTION_METHODS, METHODS, Explained, attribute

__all__ = ["AttributionSpace", "attribution_space", "explain_sequences", "model_outputs", "token_embedding",
           "token_forward", "trust_arguments"]

MAX_PLOTTED = 8  # samples drawn in a float-sequence heat map; more make the picture unreadable


# -- where attributions are computed ---------------------------------------------------------------


def token_embedding(model: nn.Module) -> nn.Embedding:
    """The embedding layer that turns the model's token ids into vectors.

    The shared ``SequenceInput`` layer of the sequence families, else (a user's own module) the one
    ``nn.Embedding`` whose vocabulary is the data's.
    """
    from ...models.layers import SequenceInput

    found = [m.embed for m in model.modules() if isinstance(m, SequenceInput) and m.tokens]
    if not found:
        vocab = getattr(getattr(model, "spec", None), "vocab_size", None)
        found = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == vocab]
    if len(found) != 1:
        family = getattr(getattr(model, "config", None), "family", type(model).__name__)
        raise ConfigError(f"explain: token attributions need one embedding layer of the token ids; the "
                          f"{family} model has {len(found)}; use a sequence family (transformer, rnn, lstm, gru, "
                          f"mingru, minlstm, rwkv)")
    return found[0]


def token_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward(embeddings)``: the model's outputs (N, outputs) computed from token embeddings (N, T, D)
    instead of ids, by replacing the embedding layer's output with a forward hook. For a language
    model, the outputs of the last position: the next token after the text.

    >>> forward = token_forward(model)                                 # doctest: +SKIP
    >>> torch.allclose(forward(token_embedding(model)(ids)), model(ids))  # True  # doctest: +SKIP
    """
    embed = token_embedding(model)
    outputs = model_outputs(model)

    def forward(embeddings: torch.Tensor) -> torch.Tensor:
        ids = torch.zeros(embeddings.shape[:2], dtype=torch.long, device=embeddings.device)  # never looked up
        handle = embed.register_forward_hook(lambda module, args, output: embeddings)
        try:
            return outputs(ids)
        finally:
            handle.remove()

    return forward


def model_outputs(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The outputs that are explained, (B, outputs): ``model(x)``; for a language model (a next-token
    target) the logits of the token after the last position, as the language_model task computes
    them: ``forward_head(forward_sequence(x))`` at the last position, whatever the pooling."""
    if getattr(getattr(model, "spec", None), "target", None) == "token":
        return lambda x: model.forward_head(model.forward_sequence(x)[:, -1])
    return model


@dataclass
class AttributionSpace:
    """The differentiable inputs a sequence run is explained in, and how to remove a position.

    ``inputs``: embeddings (B, T, D) of token ids, or the float features (B, T, F); ``forward``:
    inputs -> outputs (B, outputs); ``baseline``: the "removed" value shaped like ``inputs`` (the pad
    embedding, or 0); ``groups``: LongTensor shaped like ``inputs``, the feature id of every element,
    one per position (a position is removed whole; for tokens every padding position shares one
    id); ``window``: the occlusion window, one position.
    """

    forward: Callable[[torch.Tensor], torch.Tensor]
    inputs: torch.Tensor
    baseline: torch.Tensor
    groups: torch.Tensor
    window: tuple[int, int]
    tokens: bool

    def per_position(self, attributions: torch.Tensor) -> torch.Tensor:
        """Attributions shaped like ``inputs`` -> tokens: (B, T), summed over the embedding; sequences: as they are."""
        return attributions.sum(dim=-1) if self.tokens else attributions


def attribution_space(model: nn.Module, x: torch.Tensor, pad_id: int = 0) -> AttributionSpace:
    """The :class:`AttributionSpace` of inputs ``x``: (B, T) token ids or (B, T, F) float features."""
    device = next(model.parameters()).device
    x = x.to(device)
    if x.is_floating_point():
        forward, inputs = model_outputs(model), x.detach()
        baseline = torch.zeros_like(inputs)  # the training mean of every standardized feature
    else:
        embed = token_embedding(model)
        forward = token_forward(model)
        with torch.no_grad():
            inputs = embed(x.long()).detach()  # (B, T, D)
            pad = embed(torch.full((1, 1), pad_id, dtype=torch.long, device=device))  # (1, 1, D)
        baseline = pad.expand_as(inputs).clone()
    B, T, width = inputs.shape
    if x.is_floating_point():
        positions = torch.arange(T, device=device).expand(B, T)
    else:
        # one group per token; all padding in group 0 (removing padding changes nothing, so the
        # coalition methods spend no samples on it); ids stay contiguous, as Captum requires
        real = (x != pad_id).long()
        positions = real.cumsum(dim=1) * real
        positions = torch.where(real.all(dim=1, keepdim=True), positions - 1, positions)
        # an empty text (all padding): one group per position, since KernelSHAP needs two features at least
        positions = torch.where(real.any(dim=1, keepdim=True), positions, torch.arange(T, device=device))
    groups = positions.unsqueeze(-1).expand(B, T, width).contiguous()
    return AttributionSpace(forward, inputs, baseline, groups, (1, width), not x.is_floating_point())


def _samples(method: str, positions: int) -> int:
    """Integration steps or perturbed samples per method: coalition methods need more samples as
    the number of positions grows (at least four per position)."""
    if method in ("kernel_shap", "lime"):
        return min(1000, max(100, 4 * positions))
    return 20 if method == "gradient_shap" else 50


def _attribute(space: AttributionSpace, method: str, x: torch.Tensor, targets: torch.Tensor, seed: int,
               forward: Callable | None = None) -> torch.Tensor:
    groups = space.groups
    if len(x) != len(groups):  # e.g. a metric's perturbed copies: one group per position, padding or not
        T, width = x.shape[1], x.shape[2]
        groups = torch.arange(T, device=x.device).view(1, T, 1).expand(1, T, width)
    # the baseline is the same at every sample (the pad embedding, or 0): one row broadcasts to any batch
    base = space.baseline[:1]
    attr = attribute(method, forward or space.forward, x, targets, baseline=base, feature_mask=groups,
                     samples=_samples(method, int(groups.max()) + 1), seed=seed, window=space.window)
    if space.tokens and method == "saliency":
        # a plain gradient summed over the embedding is ~0 behind a LayerNorm (it removes the mean
        # direction); gradient x (embedding - pad embedding) is the first-order effect of removing the token
        attr = attr * (x.detach() - base).float().cpu()
    return attr.contiguous()  # Captum's metrics .view() the explanations; an LSTM's input gradient is strided


def trust_arguments(run, x: torch.Tensor, method: str, seed: int = 0) -> dict[str, Any]:
    """The keyword arguments of ``trust.assess`` for one method on a tokens or sequence run (all but
    ``target``): ``trust.assess(**trust_arguments(run, x, "integrated_gradients"), target=targets)``.

    * tokens: ``x`` becomes the embeddings (B, T, D), ``forward`` runs the model from them
      (:func:`token_forward`), ``baseline`` is the pad token's embedding at every position (deleting a
      token = replacing its id by the pad id), ``groups`` the position of every element, so whole
      tokens are removed in order of their summed attribution;
    * sequences: ``x`` as it is (B, T, F), ``forward`` the model, baseline 0 (the training mean),
      ``groups`` the time step of every element;
    * ``explain_for(model)`` explains another model (the randomisation check's re-initialised copy)
      in the same way, from the same inputs (for tokens: the trained model's embeddings, so the check
      randomises every layer after the embedding).
    """
    pad_id = getattr(run.preprocessing.inputs, "pad_id", 0)
    space = attribution_space(run.model, x, pad_id)

    def explain(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _attribute(space, method, inputs, target, seed)

    def explain_for(model: nn.Module):
        forward = token_forward(model) if space.tokens else model_outputs(model)
        return lambda inputs, target: _attribute(space, method, inputs, target, seed, forward)

    return {"forward": space.forward, "explain": explain, "x": space.inputs, "baseline": space.baseline,
            "groups": space.groups, "explain_for": explain_for, "model": run.model, "seed": seed}


# -- the explanation of one batch ------------------------------------------------------------------


def explain_sequences(run, x: torch.Tensor, y: torch.Tensor | None, targets: torch.Tensor, methods: list[str],
                      out_dir: Path, seed: int = 0) -> Explained:
    """Explain ``targets`` (B,) of a tokens or float-sequence run on inputs ``x`` (preprocessed: ids
    (B, T) or features (B, T, F)); ``y``: the true labels or None. Writes ``tokens.html`` (tokens) or
    ``sequence_METHOD.png`` (float sequences) and, for attention methods, ``attention_layers.png`` and
    ``attention_rollout.png`` into ``out_dir``.

    Attributions per method: tokens (B, T), one signed score per token; sequences (B, T, F)
    (attention methods give every feature of a step the step's score).

    >>> out = explain_sequences(run, x, y, run.model(x).argmax(1), ["integrated_gradients"], Path("e"))  # doctest: +SKIP
    """
    kind = run.spec.kind
    if input_kind(run.spec).explained_as != "positions":
        raise ConfigError(f"explain: explain_sequences takes tokens or sequence runs; this run's inputs are {kind}")
    for method in methods:
        if method not in METHODS + ATTENTION_METHODS:
            raise ConfigError(f"explain: unknown method '{method}'; choose one of "
                              f"{', '.join(METHODS + ATTENTION_METHODS)}")
    model = run.model.eval()
    if any(m in ATTENTION_METHODS for m in methods):
        check_attention(model)  # before any slow method runs
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = x.to(next(model.parameters()).device)
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1).to(x.device)
    pad_id = getattr(run.preprocessing.inputs, "pad_id", 0)

    space = attribution_space(model, x, pad_id)
    attributions: dict[str, np.ndarray] = {}
    for method in methods:
        if method in METHODS:
            attr = _attribute(space, method, space.inputs, targets, seed)
            attributions[method] = space.per_position(attr).numpy()
    maps = None
    if any(m in ATTENTION_METHODS for m in methods):
        maps = attention_maps(model, x)
        cls = 1 if getattr(model, "cls_token", None) is not None else 0
        rows = {"attention": prediction_row(model, maps[-1].mean(dim=1)),
                "attention_rollout": prediction_row(model, rollout(maps))}
        for method in methods:
            if method in ATTENTION_METHODS:
                scores = rows[method][:, cls:].numpy()  # (B, T): the inputs' positions, CLS left out
                attributions[method] = scores if space.tokens else np.repeat(scores[..., None], x.shape[-1], axis=-1)

    predictions = _predictions(run, model, x, targets, y)
    summary: dict[str, Any] = {"kind": kind, "samples": len(x), "methods": list(methods), **predictions}
    files: list[str] = []
    parts: list[str] = []
    if space.tokens:
        pre = run.preprocessing.inputs
        ids = x.cpu().tolist()
        summary["tokens"] = [[pre.decode([i]) for i in row if i != pad_id] for row in ids]
        summary["token_counts"] = [len(t) for t in summary["tokens"]]
        fragment = tokens_html(ids, pre, pad_id, attributions, predictions["predicted"], predictions["true"])
        path = out_dir / "tokens.html"
        path.write_text(_page("Token attributions", fragment), encoding="utf-8")
        files.append(str(path))
        parts.append(fragment)
    else:
        summary["steps"] = int(x.shape[1])
        names = run.spec.feature_names or [f"x{i}" for i in range(x.shape[-1])]
        for method, attr in attributions.items():
            path = out_dir / f"sequence_{method}.png"
            fig = plot_sequence(x.cpu().numpy(), attr, names, method, predictions["predicted"], predictions["true"])
            parts.append(f"<h4>{html.escape(method)}</h4>" + save_figure(fig, path, f"{method} over time and features"))
            files.append(str(path))
    if maps is not None:
        summary["attention"] = summarize_attention(model, maps)
        for path, img in _attention_figures(run, x, out_dir, [m[:1] for m in maps]):
            files.append(path)
            parts.append(img)
    return Explained(attributions=attributions, files=files, summary=summary,
                     html="\n".join(parts))


def _predictions(run, model, x, targets, y) -> dict[str, Any]:
    """What the model says about each sample, and the truth, as display strings and JSON-able values."""
    with torch.no_grad():
        out = model_outputs(model)(x).float().cpu()  # (B, outputs)
    classes = run.preprocessing.classes
    targets = targets.cpu()
    if run.spec.target in ("class", "token"):  # a language model's classes are the next token's ids
        proba = out.softmax(dim=1)
        pred = proba.argmax(dim=1)
        if run.spec.target == "token":
            name = lambda i: repr(run.preprocessing.inputs.decode([i]))
        else:
            name = (lambda i: str(classes[i])) if classes else str
        predicted = [f"{name(int(p))} (p={float(proba[i, p]):.2f})" for i, p in enumerate(pred)]
        true = None
        if y is not None:
            labels = torch.as_tensor(y)
            labels = labels[:, -1] if labels.dim() == 2 else labels  # a language model: the token after the text
            true = [name(int(v)) for v in labels]
        return {"predicted": predicted, "true": true, "predicted_index": pred.tolist(),
                "target_probability": proba.gather(1, targets[:, None])[:, 0].tolist()}
    scaler = run.preprocessing.scaler
    values = scaler.inverse(out) if scaler is not None else out
    names = run.spec.target_names or [f"output {i}" for i in range(out.shape[1])]
    picked = values.gather(1, targets[:, None])[:, 0]
    predicted = [f"{names[int(t)]} = {float(v):.4g}" for t, v in zip(targets, picked)]
    true = None
    if y is not None:
        truth = torch.as_tensor(y, dtype=torch.float32).reshape(len(x), -1)
        truth = scaler.inverse(truth) if scaler is not None else truth
        true = [f"{float(truth[i, int(t)]):.4g}" for i, t in enumerate(targets)]
    return {"predicted": predicted, "true": true, "predicted_value": picked.tolist()}


# -- pictures and HTML -----------------------------------------------------------------------------

_STYLE = """
.lw-tokens { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 14px; margin-bottom: 1.2em; }
.lw-tokens table { border-collapse: collapse; }
.lw-tokens th { text-align: right; padding: 2px 10px 2px 0; font-weight: normal; color: #555; vertical-align: top; }
.lw-tokens td { padding: 2px 0; line-height: 1.9; }
.lw-tokens span { white-space: pre; border-radius: 2px; padding: 1px 0; }
"""


def _colour(score: float, scale: float) -> str:
    """Red for a positive score, blue for a negative one, the stronger the larger |score| / scale."""
    alpha = 0.0 if scale <= 0 else min(1.0, abs(score) / scale) * 0.85
    rgb = "220,38,38" if score >= 0 else "37,99,235"
    return f"rgba({rgb},{alpha:.3f})"


def _shown(token: str) -> str:
    """A token as it reads in one line: newlines and tabs become visible marks."""
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def tokens_html(ids: list[list[int]], pre, pad_id: int, attributions: dict[str, np.ndarray],
                predicted: list[str], true: list[str] | None) -> str:
    """One block per sample: the predicted (and true) label, then one row per method with every
    non-padding token highlighted by its signed score (colour scaled per row) and the score in the
    tooltip. All text is HTML-escaped."""
    blocks = []
    for i, row in enumerate(ids):
        keep = [t for t, tok in enumerate(row) if tok != pad_id]
        tokens = [pre.decode([row[t]]) for t in keep]
        head = f"sample {i}: predicted {html.escape(predicted[i])}"
        if true is not None:
            head += f", true {html.escape(true[i])}"
        lines = [f'<div class="lw-tokens"><p><strong>{head}</strong></p><table>']
        for method, attr in attributions.items():
            scores = [float(attr[i, t]) for t in keep]
            scale = max((abs(s) for s in scores), default=0.0)
            spans = "".join(f'<span title="{html.escape(f"{tok!r}: {s:+.4g}")}" '
                            f'style="background:{_colour(s, scale)}">{html.escape(_shown(tok))}</span>'
                            for tok, s in zip(tokens, scores))
            lines.append(f"<tr><th>{html.escape(method)}</th><td>{spans}</td></tr>")
        lines.append("</table></div>")
        blocks.append("\n".join(lines))
    legend = ('<p style="font-size:13px">red: the token raises the explained output, blue: lowers it; '
              'hover a token for its score. Padding is not shown.</p>')
    return f"<style>{_STYLE}</style>\n{legend}\n" + "\n".join(blocks)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'</head>\n<body style="font-family: sans-serif; margin: 2em">\n<h1>{html.escape(title)}</h1>\n{body}\n'
            f"</body></html>\n")


def plot_sequence(x: np.ndarray, attr: np.ndarray, features: list[str], method: str, predicted: list[str],
                  true: list[str] | None):
    """Per sample: the attribution heat map (time on x, features on y, a signed colour scale) above
    the series themselves. ``x`` and ``attr`` (B, T, F); at most :data:`MAX_PLOTTED` samples."""
    from .attention import _plt

    plt = _plt()
    n = min(len(x), MAX_PLOTTED)
    T, F = x.shape[1], x.shape[2]
    fig, axes = plt.subplots(2 * n, 1, figsize=(max(6.0, 0.08 * T + 3), n * (1.2 + 0.12 * F + 1.3)),
                             squeeze=False, gridspec_kw={"height_ratios": [1.0 + 0.12 * F, 1.3] * n},
                             layout="constrained")
    for i in range(n):
        top, bottom = axes[2 * i][0], axes[2 * i + 1][0]
        scale = float(np.abs(attr[i]).max()) or 1.0
        image = top.imshow(attr[i].T, aspect="auto", cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest",
                           extent=(-0.5, T - 0.5, F - 0.5, -0.5))
        top.set_yticks(range(F))
        top.set_yticklabels(features, fontsize=7)
        top.set_xticks([])
        title = f"sample {i}: {method}, predicted {predicted[i]}" + (f", true {true[i]}" if true else "")
        top.set_title(title, fontsize=8)
        fig.colorbar(image, ax=[top, bottom], fraction=0.02, pad=0.01)  # both shrink: time stays aligned
        for f in range(F):
            bottom.plot(range(T), x[i, :, f], lw=1.0, label=features[f])
        bottom.set_xlim(-0.5, T - 0.5)
        bottom.tick_params(labelsize=7)
        if F <= 8:
            bottom.legend(fontsize=6, loc="upper left", frameon=False)
    axes[-1][0].set_xlabel("time step")
    return fig
