"""Explanations of text and float-sequence runs: per-token attributions through the embeddings of
every token family, the highlighted-token HTML, attention maps and attention rollout (Abnar &
Zuidema 2020), integrated-gradients completeness, and the one-line error for attention on a
model without attention layers."""

from __future__ import annotations

import html
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    assert_one_line_error,
    cli,
    quick_train,
    sequence_inputs,
    sequence_spec,
)

import layerwise
from layerwise.core.errors import ConfigError
from layerwise.models import FAMILIES, build_model
from layerwise.tools.explain.attention import attention_figure, attention_maps, rollout
from layerwise.tools.explain.methods import METHODS, attribute
from layerwise.tools.explain.sequences import (
    attribution_space,
    explain_sequences,
    token_embedding,
    token_forward,
    trust_arguments,
)

pytest.importorskip("captum")
pytest.importorskip("tokenizers")

TOKEN_FAMILIES = ["transformer", "rnn", "lstm", "gru", "mingru", "minlstm", "rwkv"]
NONZERO = ["saliency", "integrated_gradients", "gradient_shap", "kernel_shap", "lime", "occlusion"]


def _lines(n: int = 48, seed: int = 0) -> pd.DataFrame:
    """Short lines of two 'plays'; some hold a literal ``<b>`` to prove the HTML escapes text."""
    rng = random.Random(seed)
    words = {"comedy": ["jest", "fool", "merry", "<b>"], "tragedy": ["death", "tomb", "woe", "poison"]}
    rows = []
    for i in range(n):
        label = list(words)[i % 2]
        rows.append({"text": " ".join(rng.choice(words[label] + ["the"]) for _ in range(rng.randint(2, 4))),
                     "label": label})
    return pd.DataFrame(rows)


def _train(folder, name, data, model):
    return layerwise.train({"name": name, "data": data, "model": model, "train": quick_train(epochs=1, batch_size=16)},
                           runs_dir=folder / "runs", quiet=True)


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    """A tiny transformer (byte-level BPE, CLS pooling, 2 layers) and a tiny LSTM (characters), one
    epoch each; texts are shorter than max_length, so every sample has left padding."""
    folder = tmp_path_factory.mktemp("text")
    _lines().to_csv(folder / "lines.csv", index=False)
    data = {"source": "text", "path": str(folder / "lines.csv"), "test_fraction": 0.25}
    transformer = _train(folder, "tf", {**data, "tokenizer": "bpe", "vocab_size": 270, "max_length": 32},
                         {"family": "transformer", "width": 16, "heads": 2, "layers": 2, "pooling": "cls"})
    lstm = _train(folder, "lstm", {**data, "tokenizer": "char", "max_length": 32},
                  {"family": "lstm", "embedding": 8, "hidden": 8, "layers": 1})
    return {"transformer": transformer, "lstm": lstm}


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory):
    """A float-sequence run: a 1-layer transformer forecasting two columns of a series (T=10, F=2)."""
    folder = tmp_path_factory.mktemp("series")
    t = np.arange(240)
    pd.DataFrame({"t": t, "a": np.sin(t / 6), "b": np.cos(t / 9)}).to_csv(folder / "series.csv", index=False)
    data = {"source": "timeseries", "path": str(folder / "series.csv"), "time_column": "t", "context": 10,
            "horizon": 1}
    return layerwise.train({"name": "series", "data": data, "task": "forecasting",
                            "model": {"family": "transformer", "width": 8, "heads": 2, "layers": 1, "pooling": "mean"},
                            "train": quick_train(epochs=1)}, runs_dir=folder / "runs", quiet=True)


def _batch(run, n=3):
    x = run.data.test.x[:n]
    return x, run.data.test.y[:n], run.model(x).argmax(1) if run.spec.target == "class" else torch.zeros(n).long()


# -- token attributions ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", TOKEN_FAMILIES)
def test_token_forward_from_embeddings_equals_the_model_on_ids(family):
    spec = sequence_spec("tokens", 7)
    torch.manual_seed(0)
    model = build_model(FAMILIES.get(family).Config(), spec).eval()
    ids = sequence_inputs(spec, 3)
    with torch.no_grad():
        from_embeddings = token_forward(model)(token_embedding(model)(ids))
        assert torch.allclose(from_embeddings, model(ids), atol=1e-5)
        # the hook is gone afterwards: the model reads ids again
        assert not torch.allclose(model(torch.zeros_like(ids)), model(ids))


@pytest.mark.parametrize("name", ["transformer", "lstm"])
def test_per_token_scores_and_escaped_html(text_runs, name, tmp_path):
    run = text_runs[name]
    pre = run.preprocessing.inputs
    x, y, targets = _batch(run)
    out = explain_sequences(run, x, y, targets, list(METHODS), tmp_path)
    real = (x != pre.pad_id).numpy()
    assert (~real).any(axis=1).all()  # every sample is padded: the pad positions are checked too
    for method in METHODS:
        attr = out.attributions[method]
        assert attr.shape == tuple(x.shape) and np.isfinite(attr).all(), method
    for method in NONZERO:
        assert (out.attributions[method][real] != 0).all(), method
    # a pad token equals the baseline: it cannot matter. Integrated gradients gives exactly 0 there;
    # occlusion subtracts forward passes run at different batch sizes, whose float32 sums may differ in
    # the last bits, so a pad position scores a few ulps of the outputs (1.2e-7 measured on an AVX-512
    # CPU, where the least important real token scores 3e-5)
    assert (out.attributions["integrated_gradients"][~real] == 0).all()
    with torch.no_grad():
        scale = float(run.model(x).abs().max())
    assert np.abs(out.attributions["occlusion"][~real]).max() <= 64 * np.finfo(np.float32).eps * scale
    assert out.summary["token_counts"] == real.sum(axis=1).tolist()

    page = (tmp_path / "tokens.html").read_text(encoding="utf-8")
    assert str(tmp_path / "tokens.html") in out.files
    assert "<b>" not in page and "&lt;" in page  # the texts' literal <b> shows as text, escaped
    rows = re.findall(r"<tr><th>(\w+)</th><td>(.*?)</td></tr>", page)
    assert len(rows) == len(x) * len(METHODS)
    for i, (method, cells) in enumerate(rows):
        sample = i // len(METHODS)
        shown = html.unescape("".join(re.findall(r">([^<]*)</span>", cells)))
        assert shown == pre.decode(x[sample].tolist()), method  # every non-pad token, in order
        # the tooltip carries the token's score
        scores = [float(s) for s in re.findall(r'title="[^"]*: ([-+][^"]+)"', cells)]
        expected = out.attributions[method][sample][real[sample]]
        assert np.allclose(scores, expected, rtol=1e-3, atol=1e-12), method
    labels = [str(c) for c in run.preprocessing.classes]
    assert all(f"true {labels[int(v)]}" in page for v in y)
    assert out.html and "lw-tokens" in out.html


@pytest.mark.parametrize("name", ["transformer", "lstm"])
def test_integrated_gradients_completeness_on_the_embedding_path(text_runs, name, tmp_path):
    """Sum of the per-token scores = f(text) - f(all padding), the model run on real pad ids."""
    run = text_runs[name]
    model = run.model
    x, y, targets = _batch(run)
    scores = explain_sequences(run, x, y, targets, ["integrated_gradients"], tmp_path).attributions
    with torch.no_grad():
        gap = (model(x) - model(torch.full_like(x, run.preprocessing.inputs.pad_id)))
    gap = gap.gather(1, targets[:, None])[:, 0].numpy()
    total = scores["integrated_gradients"].sum(axis=1)
    assert np.allclose(total, gap, rtol=0.02, atol=1e-4), (total, gap)
    assert np.abs(gap).max() > 1e-3  # the check is not trivially 0 = 0


def test_language_model_is_explained_for_the_next_token(tmp_path):
    """A causal character model: scores for the token after the block, complete against f(all padding)."""
    (tmp_path / "story.txt").write_text(" ".join(_lines(60)["text"]) + "\n")
    run = _train(tmp_path, "charlm", {"source": "text", "path": str(tmp_path / "story.txt"), "block_size": 12},
                 {"family": "transformer", "width": 16, "heads": 2, "layers": 2, "causal": True, "pooling": "mean"})
    x, y = run.data.test.x[:2], run.data.test.y[:2]
    model = run.model
    with torch.no_grad():  # the language_model task's logits, at the last position: the token after each block
        logits = model.forward_head(model.forward_sequence(x))[:, -1]
    targets = logits.argmax(1)
    out = explain_sequences(run, x, y, targets, ["integrated_gradients", "attention_rollout"], tmp_path)
    assert out.attributions["integrated_gradients"].shape == out.attributions["attention_rollout"].shape == (2, 12)
    with torch.no_grad():
        empty = model.forward_head(model.forward_sequence(torch.full_like(x, run.preprocessing.inputs.pad_id)))[:, -1]
    gap = (logits - empty).gather(1, targets[:, None])[:, 0].numpy()
    assert np.allclose(out.attributions["integrated_gradients"].sum(axis=1), gap, rtol=0.02, atol=1e-4)
    # causal attention: the last position's rollout row, which covers every position
    rolled = rollout(attention_maps(run.model, x))
    assert np.allclose(out.attributions["attention_rollout"], rolled[:, -1].numpy())
    decode = run.preprocessing.inputs.decode
    assert out.summary["true"] == [repr(decode([int(t)])) for t in y[:, -1]]
    assert f"true {html.escape(repr(decode([int(y[0, -1])])))}" in (tmp_path / "tokens.html").read_text()


def test_trust_arguments_explain_in_the_embedding_space(text_runs):
    run = text_runs["lstm"]
    x, _, targets = _batch(run)
    args = trust_arguments(run, x, "saliency")
    emb = args["x"]
    assert emb.shape == (*x.shape, token_embedding(run.model).embedding_dim) and emb.is_floating_point()
    with torch.no_grad():
        assert torch.allclose(args["forward"](emb), run.model(x), atol=1e-5)
        removed = args["forward"](args["baseline"])
        assert torch.allclose(removed, run.model(torch.full_like(x, run.preprocessing.inputs.pad_id)), atol=1e-5)
    assert args["explain"](emb, targets).shape == emb.shape
    # every element of a token carries the token's group id; all padding shares one id
    groups = args["groups"]
    assert (groups == groups[..., :1]).all()
    real = x != run.preprocessing.inputs.pad_id
    assert (groups[..., 0][~real] == 0).all() and groups[0, :, 0][real[0]].tolist() == list(
        range(1, int(real[0].sum()) + 1))
    other = args["explain_for"](build_model(run.config.model, run.spec).eval())(emb, targets)
    assert other.shape == emb.shape and not torch.allclose(other, args["explain"](emb, targets))


# -- float sequences -------------------------------------------------------------------------------


def test_float_sequence_attributions_per_step_and_pictures(sequence_run, tmp_path):
    run = sequence_run
    x, y, targets = _batch(run)
    methods = ["integrated_gradients", "kernel_shap", "occlusion", "attention_rollout"]
    out = explain_sequences(run, x, y, targets, methods, tmp_path)
    for method in methods:
        assert out.attributions[method].shape == tuple(x.shape) == (3, 10, 2), method
        path = tmp_path / f"sequence_{method}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(path) in out.files
    # the perturbation methods remove whole time steps: both features of a step get its score
    for method in ("kernel_shap", "occlusion"):
        attr = out.attributions[method]
        assert np.allclose(attr[..., 0], attr[..., 1]) and (attr != 0).any(), method
    with torch.no_grad():
        gap = (run.model(x) - run.model(torch.zeros_like(x)))[:, 0].numpy()  # baseline 0: the training mean
    assert np.allclose(out.attributions["integrated_gradients"].sum(axis=(1, 2)), gap, rtol=0.02, atol=1e-4)
    assert out.summary["steps"] == 10 and len(out.summary["predicted"]) == 3


# -- attention -------------------------------------------------------------------------------------


def test_attention_maps_are_row_stochastic_per_layer(text_runs):
    run = text_runs["transformer"]
    x, _, _ = _batch(run)
    maps = attention_maps(run.model, x)
    T = x.shape[1] + 1  # the CLS token comes first
    assert len(maps) == 2 and all(m.shape == (3, 2, T, T) for m in maps)
    assert all(torch.allclose(m.sum(-1), torch.ones(3, 2, T), atol=1e-5) for m in maps)
    rolled = rollout(maps)
    assert rolled.shape == (3, T, T) and torch.allclose(rolled.sum(-1), torch.ones(3, T), atol=1e-5)
    assert (rolled >= 0).all()


def test_rollout_formula():
    # one layer without the residual: the head-averaged map itself
    maps = [torch.rand(2, 3, 5, 5).softmax(-1)]
    assert torch.allclose(rollout(maps, residual=False), maps[0].mean(dim=1))
    # one uniform layer with the residual: 0.5 * 1/T + 0.5 on the diagonal, 0.5 * 1/T elsewhere
    uniform = torch.full((1, 2, 4, 4), 0.25)
    rolled = rollout([uniform])[0]
    assert torch.allclose(rolled.diagonal(), torch.full((4,), 0.625)) and torch.isclose(rolled[0, 1], torch.tensor(0.125))
    # layers multiply, the first rightmost: a permutation then the identity gives the permutation
    perm = torch.eye(4)[[1, 2, 3, 0]].view(1, 1, 4, 4)
    assert torch.allclose(rollout([perm, torch.eye(4).view(1, 1, 4, 4)], residual=False)[0], perm[0, 0])
    assert torch.allclose(rollout([perm, perm], residual=False)[0], perm[0, 0] @ perm[0, 0])


def test_one_layer_model_rollout_without_residual_is_the_head_mean(sequence_run):
    x, _, _ = _batch(sequence_run)
    (layer,) = attention_maps(sequence_run.model, x)
    assert torch.allclose(rollout([layer], residual=False), layer.mean(dim=1))


def test_attention_pictures_and_scores(text_runs, tmp_path):
    run = text_runs["transformer"]
    x, y, targets = _batch(run)
    out = explain_sequences(run, x, y, targets, ["attention", "attention_rollout"], tmp_path)
    for name in ("attention_layers.png", "attention_rollout.png", "tokens.html"):
        assert (tmp_path / name).is_file() and str(tmp_path / name) in out.files
    rolled = rollout(attention_maps(run.model, x))
    assert np.allclose(out.attributions["attention_rollout"], rolled[:, 0, 1:].numpy())  # the CLS row, tokens only
    assert out.attributions["attention"].shape == tuple(x.shape)
    assert out.summary["attention"] == {"layers": 2, "heads": 2, "positions": x.shape[1] + 1, "cls_token": True}


def test_attention_figure_for_a_vit_run(tmp_path):
    run = layerwise.train({"name": "vit", "data": {"name": "digits", "limit": 64},
                           "model": {"family": "vit", "width": 8, "heads": 2, "layers": 1},
                           "train": quick_train(epochs=1)}, runs_dir=tmp_path / "runs", quiet=True)
    x = run.preprocessing.inputs.batch(run.data.test.x[:2], train=False)
    files = attention_figure(run, x, tmp_path / "out")
    assert [p.rsplit("/", 1)[-1] for p in files] == ["attention_layers.png", "attention_rollout.png"]
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in files)


def test_attention_on_an_lstm_run_is_a_one_line_error(text_runs, tmp_path):
    run = text_runs["lstm"]
    x, y, targets = _batch(run)
    message = "attention needs a transformer-family model (ft_transformer, transformer, vit); this run's family is lstm"
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        explain_sequences(run, x, y, targets, ["integrated_gradients", "attention_rollout"], tmp_path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "tokens.html").exists()  # refused before any work
    code, _out, err = cli("explain", run.path, "--method", "attention", "--no-trust", cwd=tmp_path)
    assert_one_line_error(code, err, message)


def test_attribute_needs_embeddings_not_ids(text_runs):
    run = text_runs["lstm"]
    x, _, targets = _batch(run)
    with pytest.raises(ConfigError, match="embeddings"):
        attribute("saliency", run.model, x, targets)
    space = attribution_space(run.model, x, run.preprocessing.inputs.pad_id)
    assert space.inputs.shape[:2] == x.shape and space.per_position(space.inputs).shape == x.shape
