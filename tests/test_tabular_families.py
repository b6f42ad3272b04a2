"""The tabular families (resmlp, ft_transformer, tabm, and a bag of TabMs) and the numeric embeddings they share.

First the parts on their own: piecewise-linear encodings checked against values worked out by hand,
the row layout read from a spec (and derived for runs saved before the spec recorded it), tokens
that are embedding lookups, and the ensemble contract of the training step (each TabM member trained
on its own loss, the members combined at inference). Then each family trained briefly on a CSV with
numeric, one-hot and embedded columns and taken, unchanged, through prediction on new rows, ONNX
export checked in a real onnxruntime session, explanation, compression and a real server.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import quick_train

import layerwise
from layerwise import FAMILIES, ModelError, RunError
from layerwise.data.spec import DataSpec
from layerwise.models import build_model, combine_members
from layerwise.models.numeric_embeddings import (
    FALLBACK_BINS,
    PeriodicEmbedding,
    PiecewiseLinearEncoding,
    TabularLayout,
    TabularTokens,
)
from layerwise.tasks import TASKS, ensemble_loss

FAMILIES_TABULAR = ["resmlp", "ft_transformer", "tabm", "bag"]
TINY = {"resmlp": {"width": 16, "blocks": 1},
        "ft_transformer": {"d_token": 8, "heads": 2, "blocks": 1},
        "tabm": {"k": 4, "width": 16, "blocks": 1, "embedding_dim": 4},
        # model.bags: two TabMs, each fitted on its own folds (an ensemble of ensembles)
        "bag": {"family": "tabm", "k": 4, "width": 16, "blocks": 1, "embedding_dim": 4, "bags": 2}}

LAYOUT = DataSpec(kind="tabular", input_shape=(7,), target="class", num_classes=3,
                  numeric=[0, 1, 6], onehot=[(2, 3)], categorical=[(5, 4)],
                  bins=[[-1.0, 0.0, 1.0], [-2.0, -1.0, 1.0, 2.0], [0.0, 1.0]])


def _rows(spec: DataSpec, n: int = 6, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, *spec.input_shape, generator=torch.Generator().manual_seed(seed))
    for start, width in spec.onehot:
        x[:, start:start + width] = torch.eye(width)[torch.arange(n) % width]
    for position, cardinality in spec.categorical:
        x[:, position] = (torch.arange(n) % cardinality).float()
    return x


# -- numeric embeddings ---------------------------------------------------------------------------


def test_piecewise_linear_encoding_matches_values_worked_by_hand():
    # feature 0: bins [0, 1] and [1, 3]; feature 1: one bin [-1, 1], padded to two
    encode = PiecewiseLinearEncoding(((0.0, 1.0, 3.0), (-1.0, 1.0)))
    x = torch.tensor([[-1.0, 0.0], [0.5, 3.0], [2.0, -3.0], [5.0, 1.0]])
    expected = torch.tensor([
        [[-1.0, 0.0], [0.5, 0.0]],  # below the first edge: the first bin goes negative, the next stays 0
        [[0.5, 0.0], [2.0, 0.0]],   # a single bin is clipped on neither side
        [[1.0, 0.5], [-1.0, 0.0]],  # a full first bin, half the second
        [[1.0, 2.0], [1.0, 0.0]],   # past the last edge: the last bin grows beyond 1
    ])
    assert torch.allclose(encode(x), expected)
    assert not any(t.is_floating_point() and not torch.isfinite(t).all() for t in encode.buffers())


def test_periodic_embedding_starts_from_small_frequencies_and_is_per_feature():
    torch.manual_seed(0)
    emb = PeriodicEmbedding(200, 6, frequencies=16, sigma=0.1)
    freq = emb.frequencies.detach()
    assert freq.abs().max() <= 0.3 + 1e-6 and 0.07 < float(freq.std()) < 0.1  # N(0, 0.1) cut at 3 sigma
    out = emb(torch.randn(5, 200))
    assert out.shape == (5, 200, 6) and (out >= 0).all()
    lite = PeriodicEmbedding(200, 6, frequencies=16, sigma=0.1, lite=True)
    assert isinstance(lite.linear, torch.nn.Linear) and lite.linear.weight.shape == (6, 32)  # one layer for all


def test_layout_of_a_spec_saved_before_numeric_and_bins_were_recorded():
    old = DataSpec(kind="tabular", input_shape=(4,), target="class", num_classes=2, categorical=[(2, 3)])
    layout = TabularLayout.of(old)
    assert layout.numeric == (0, 1, 3) and layout.columns == 4
    uniform = tuple(torch.linspace(-3, 3, FALLBACK_BINS + 1).tolist())
    assert layout.bins == (uniform, uniform, uniform)
    # repeated quantiles (a column of few values) merge; a constant column gets one bin around its value
    spec = DataSpec(kind="tabular", input_shape=(2,), target="class", num_classes=2, numeric=[0, 1],
                    bins=[[0.0, 0.0, 1.0, 1.0], [2.0, 2.0]])
    assert TabularLayout.of(spec).bins == ((0.0, 1.0), (1.0, 3.0))


@pytest.mark.parametrize("change, message", [
    ({"numeric": [0, 1, 2]}, "data spec: position 2 is listed as numeric and as onehot"),
    ({"numeric": [0, 6]}, "data spec: positions [1] are in none of the 7 input features"),
    ({"bins": [[0.0, 1.0]]}, "data spec: bins has 1 entries for 3 numeric features"),
    ({"bins": [[0.0, float("nan")], [], []]}, "position 0 are not finite"),
    ({"onehot": [(2, 3), (7, 2)]}, "data spec: positions [7, 8] lie outside the 7 input features"),
    ({"categorical": [(4, 3)]}, "data spec: position 4 is listed as categorical and as onehot"),
])
def test_a_layout_that_does_not_fit_is_one_line_naming_the_position(change, message):
    spec = DataSpec(**{**LAYOUT.__dict__, **change})
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        build_model(FAMILIES.get("resmlp").Config(**TINY["resmlp"]), spec)
    assert "\n" not in str(info.value) and "train the run again" in str(info.value)


def test_tokens_of_one_hot_groups_and_embedding_columns_are_lookups():
    torch.manual_seed(0)
    tokens = TabularTokens(LAYOUT, 5)
    x = _rows(LAYOUT, 3)
    x[:, 2:5] = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # level 2, unknown, level 0
    x[:, 5] = torch.tensor([1.0, 9.0, -2.0])  # a code, one past the levels, one below
    out = tokens(x)
    assert out.shape == (3, 5, 5)  # 3 numeric features, 1 one-hot group, 1 embedding column
    weight, bias = tokens.onehot.weight[0], tokens.onehot.bias[0]  # (widest, d), (d,)
    assert torch.allclose(out[0, 3], weight[2] + bias) and torch.allclose(out[1, 3], bias)
    table, cbias = tokens.categorical.weight, tokens.categorical_bias[0]
    assert torch.allclose(out[0, 4], table[1] + cbias)
    assert torch.allclose(out[1, 4], table[3] + cbias) and torch.allclose(out[2, 4], table[0] + cbias)  # clamped
    numeric = tokens.numeric  # x_j * w_j + b_j
    assert torch.allclose(out[:, 0], x[:, :1] * numeric.weight[0] + numeric.bias[0])


def test_mlp_without_embeddings_keeps_the_layers_and_keys_old_runs_saved():
    spec = DataSpec(kind="tabular", input_shape=(4,), target="class", num_classes=3, categorical=[(3, 6)])
    model = build_model(FAMILIES.get("mlp").Config(), spec)
    assert list(model.state_dict()) == ["inputs.embeddings.0.weight", "body.0.weight", "body.0.bias",
                                        "body.3.weight", "body.3.bias", "head.weight", "head.bias"]
    assert model.body[0].in_features == 3 + 3  # three scalars and an embedding of width (6 + 1) // 2
    embedded = build_model(FAMILIES.get("mlp").Config(numeric_embedding="piecewise", embedding_dim=4), LAYOUT)
    # 3 numeric features x 4, the 3 one-hot slots as they are, an embedding of 4 levels (width 2)
    assert embedded.body[0].in_features == 3 * 4 + 3 + 2
    assert embedded.inputs.numeric.encoding.max_bins == 3


# -- the ensemble contract -----------------------------------------------------------------------


def test_combine_members_averages_probabilities_or_values():
    outputs = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # member probabilities [.5, .5] and [.75, .25]
    assert torch.allclose(combine_members(outputs, "class").softmax(-1), torch.tensor([[0.625, 0.375]]))
    assert torch.allclose(combine_members(torch.tensor([[[1.0], [3.0]]]), "numeric"), torch.tensor([[2.0]]))


def _tabm(spec: DataSpec = LAYOUT, **settings):
    torch.manual_seed(0)
    return build_model(FAMILIES.get("tabm").Config(**{**TINY["tabm"], "dropout": 0.0, **settings}), spec)


@pytest.mark.parametrize("adapters", ["mini", "full"])
def test_tabm_trains_each_member_on_its_own_loss_and_predicts_with_their_mean(adapters):
    model = _tabm(adapters=adapters)
    task = TASKS.get("classification")(LAYOUT, None, None)
    x, y = _rows(LAYOUT, 6), torch.tensor([0, 1, 2, 0, 1, 2])
    model.train()
    members = model(x)
    assert members.shape == (6, 4, 3)
    step = task.training_step(model, (x, y), None)
    per_member = [F.cross_entropy(members[:, i], y) for i in range(4)]
    assert torch.allclose(step.loss, torch.stack(per_member).mean())  # the mean of the members' own losses
    assert step.count == 6  # per sample: the logged loss stays a mean over samples
    model.eval()
    with torch.no_grad():
        combined = model(x)
    assert combined.shape == (6, 3)
    assert torch.allclose(combined, step.outputs, atol=1e-6)  # eval returns what training metrics read
    assert torch.allclose(combined.softmax(-1), members.detach().softmax(-1).mean(1), atol=1e-6)
    assert step.sums["accuracy"] == (combined.argmax(1) == y).sum()
    step.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tabm_regression_trains_members_on_their_own_errors_and_predicts_their_mean():
    spec = DataSpec(kind="tabular", input_shape=(3,), target="numeric", num_targets=2, numeric=[0, 1, 2])
    model = _tabm(spec, numeric_embedding="periodic")
    x, y = _rows(spec, 5), torch.randn(5, 2)
    model.train()
    members = model(x)  # (5, 4, 2)
    loss, count, combined = ensemble_loss(TASKS.get("regression")(spec, None, None).loss, members, y, "numeric")
    assert torch.allclose(loss, torch.stack([F.mse_loss(members[:, i], y) for i in range(4)]).mean())
    assert count == 5
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), members.detach().mean(1), atol=1e-6)
        assert torch.allclose(model(x), combined, atol=1e-6)


def test_members_start_apart_one_value_per_member_and_column():
    model = _tabm()  # piecewise embeddings: the first adapter starts at N(0, 1) values
    weight = model.adapter.weight.detach()  # (k, D): columns of widths 4, 4, 4 (numeric), 3 (one-hot), 2 (embedding)
    starts = [0, 4, 8, 12, 15, 17]
    for a, b in zip(starts, starts[1:]):
        assert (weight[:, a:b] == weight[:, a:a + 1]).all()  # constant within a column
    assert not torch.equal(weight[0], weight[1])  # members differ
    plain = _tabm(numeric_embedding="none", adapters="full")
    first = plain.backbone[0]  # an EnsembleLinear: per-member r, s and biases
    assert set(first.r.detach().unique().tolist()) <= {-1.0, 1.0}  # random signs without embeddings
    assert (first.s == 1).all() and (first.bias == first.bias[0]).all()  # one shared draw of the biases
    model.train()
    out = model(_rows(LAYOUT, 2))
    assert not torch.allclose(out[:, 0], out[:, 1])  # different predictions before any training


def test_a_tabm_student_learns_from_the_teacher_member_by_member():
    from layerwise.tasks.distillation import distillation_loss

    model = _tabm()
    teacher = build_model(FAMILIES.get("mlp").Config(hidden=[8]), LAYOUT)
    task = TASKS.get("distillation")(LAYOUT, None, None)
    task.attach_teacher(teacher, temperature=2.0, alpha=0.5, device=torch.device("cpu"))
    x, y = _rows(LAYOUT, 6), torch.tensor([0, 1, 2, 0, 1, 2])
    model.train()
    step = task.training_step(model, (x, y), None)
    members = model(x)
    with torch.no_grad():
        soft = teacher(x)
    expected = torch.stack([distillation_loss(members[:, i], soft, y, 2.0, 0.5) for i in range(4)]).mean()
    assert torch.allclose(step.loss, expected, atol=1e-6) and step.count == 6 and step.outputs.shape == (6, 3)


# -- trained on a CSV, then every tool unchanged --------------------------------------------------


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A CSV whose target depends on a skewed number, a 3-level colour (one-hot) and a 12-level city
    (embedded), with gaps."""
    folder = tmp_path_factory.mktemp("tabular_families")
    rng = np.random.default_rng(0)
    n = 300
    spend = rng.lognormal(3.0, 1.0, n)
    age = rng.normal(40, 12, n)
    color = rng.choice(["red", "green", "blue"], n)
    city = rng.choice([f"city{i}" for i in range(12)], n)
    score = np.log(spend) - 3 + 1.5 * (color == "red") + 0.8 * np.isin(city, ["city1", "city2", "city3"])
    frame = pd.DataFrame({"spend": spend, "age": age, "color": color, "city": city,
                          "bought": (score > 0.6).astype(int)})
    frame.loc[4, "age"] = np.nan
    frame.loc[7, "color"] = np.nan
    frame.to_csv(folder / "shop.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def runs(table):
    trained = {}
    for family in FAMILIES_TABULAR:
        cfg = {"name": family, "data": {"source": "csv", "path": str(table / "shop.csv"), "target": "bought",
                                        "onehot_max_levels": 5},  # city's 12 levels embedded: every input path
               "model": {"family": family, **TINY[family]}, "train": quick_train(epochs=8, lr=0.01),
               "evaluate": {"baselines": False}}
        trained[family] = layerwise.train(cfg, runs_dir=table / "runs", quiet=True)
    return trained


def _new_rows() -> pd.DataFrame:
    return pd.DataFrame({"spend": [5.0, 80.0, np.nan, 1e4], "age": [30.0, np.nan, 51.0, 44.0],
                         "color": ["red", "purple", None, "blue"], "city": ["city1", "atlantis", "city5", None]})


@pytest.mark.parametrize("family", FAMILIES_TABULAR)
def test_each_family_learns_the_table_and_predicts_new_rows(runs, family):
    run = runs[family]
    spec = run.spec
    assert spec.onehot and spec.categorical and len(spec.bins) == len(spec.numeric) > 0, spec  # every path is used
    assert run.evaluate()["accuracy"] >= 0.75
    out = layerwise.load_run(run.path).predict(_new_rows())  # unseen levels, gaps, an outlier
    assert out["proba"].shape == (4, 2) and np.allclose(out["proba"].sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(out["proba"], run.predict(_new_rows())["proba"], atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES_TABULAR)
def test_onnx_export_matches_torch_in_onnxruntime(runs, family):
    ort = pytest.importorskip("onnxruntime")
    from layerwise.tools.export import TOLERANCE

    run = runs[family]
    result = run.export("onnx")
    assert result.max_abs_diff <= TOLERANCE
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = run.preprocessing.inputs.batch(run.data.test.x[:9]).float()
    with torch.no_grad():
        expected = run.model.cpu().eval()(x).numpy()
    for rows in (x[:1], x):  # a dynamic batch
        got = session.run(None, {session.get_inputs()[0].name: rows.numpy()})[0]
        assert got.shape == (len(rows), 2) and np.abs(got - expected[:len(rows)]).max() <= TOLERANCE


@pytest.mark.parametrize("family", FAMILIES_TABULAR)
def test_explanations_name_the_columns(runs, family):
    result = runs[family].explain(samples=3, methods=["integrated_gradients", "kernel_shap"], trust=False)
    summary = result.summary
    assert summary["columns"] == ["spend", "age", "color", "city"]
    for method in result.methods:
        scores = np.array(summary["column_attributions"][method])
        assert scores.shape == (3, 4) and np.isfinite(scores).all() and np.abs(scores).sum() > 0


def test_ft_transformer_attention_reads_the_columns_from_its_cls_token(runs):
    from layerwise.tools.explain.attention import attention_maps, prediction_row, rollout

    run = runs["ft_transformer"]
    x = run.preprocessing.inputs.batch(run.data.test.x[:4]).float()
    maps = attention_maps(run.model, x)
    columns = len(run.spec.numeric) + len(run.spec.onehot) + len(run.spec.categorical)
    assert len(maps) == 1 and maps[0].shape == (4, 2, 1 + columns, 1 + columns)
    assert torch.allclose(maps[0].sum(-1), torch.ones(4, 2, 1 + columns), atol=1e-5)
    row = prediction_row(run.model, rollout(maps))
    assert torch.allclose(row, rollout(maps)[:, 0])  # the [CLS] token's row feeds the prediction


@pytest.mark.slow  # ~10 s a family: a new run, latency measured and reloaded
@pytest.mark.parametrize("family", FAMILIES_TABULAR)
def test_dynamic_int8_and_magnitude_pruning_load_back_and_score(runs, family):
    run = runs[family]
    for options in ({"quantize": "dynamic"}, {"prune": "magnitude", "sparsity": 0.5}):
        result = run.compress(**options)
        metric = next(r for r in result.table if r["key"] == "metric")
        again = layerwise.load_run(result.path)
        assert again.evaluate()["accuracy"] == pytest.approx(metric["compressed"], abs=1e-6)
        assert metric["compressed"] >= metric["original"] - 0.1
    assert json.loads((result.path / "compression.json").read_text())["global_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_qat_of_an_ensemble_is_refused_on_one_line(runs):
    with pytest.raises(RunError, match="--quantize qat: the tabm model is an ensemble of 4 members") as info:
        runs["tabm"].compress(quantize="qat", finetune_epochs=1)
    assert "\n" not in str(info.value) and "use --quantize static or dynamic" in str(info.value)


@pytest.mark.slow  # ~35 s: a graph captured, fine-tuned one epoch, converted and lowered twice
def test_qat_of_ft_transformer_switches_its_attention_dropout_off(runs):
    result = runs["ft_transformer"].compress(quantize="qat", finetune_epochs=1)
    metric = next(r for r in result.table if r["key"] == "metric")
    again = layerwise.load_run(result.path)
    scores = [again.evaluate()["accuracy"] for _ in range(2)]  # dropout left on would make these differ
    assert scores == pytest.approx([metric["compressed"]] * 2, abs=1e-6)


@pytest.mark.slow  # a real server: startup exports the model to ONNX
@pytest.mark.parametrize("family", ["tabm", "bag"])
def test_an_ensemble_serves_rows_like_run_predict(runs, family):
    pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from test_serve import Server

    run = runs[family]
    server = Server(run.path, "--backend", "onnx", cwd=run.path.parent).ready()
    try:
        frame = _new_rows()
        rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in frame.to_dict("records")]
        response = server.predict(rows)
        assert response.status_code == 200, response.text
        served = np.array([[p["probabilities"]["0"], p["probabilities"]["1"]] for p in response.json()["predictions"]])
        np.testing.assert_allclose(served, run.predict(frame)["proba"], atol=1e-4)
    finally:
        server.stop()
