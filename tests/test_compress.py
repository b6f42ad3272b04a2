"""`layerwise compress`: int8 quantization (dynamic, static, QAT) and pruning (magnitude, structured),
each written as a new run that loads back, on tiny models trained on scikit-learn's digits."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from helpers import assert_one_line_error, cli, quick_train, run_dirs

import layerwise

DIGITS = {"source": "builtin", "name": "digits", "val_fraction": 0.1, "test_fraction": 0.2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("compress") / "runs"


@pytest.fixture(scope="module")
def mlp_run(runs):
    cfg = {"name": "mlp", "data": DIGITS, "model": {"family": "mlp", "hidden": [48, 32], "dropout": 0.0},
           "train": quick_train(epochs=3)}
    return layerwise.train(cfg, runs_dir=runs, quiet=True)


def _test_accuracy(run) -> float:
    return float(run.evaluate()["accuracy"])


def _row(result, key):
    return next(r for r in result.table if r["key"] == key)


def _reloaded_matches(result):
    """The new run loads with load_run and scores what the table recorded right after compressing."""
    again = layerwise.load_run(result.path)
    accuracy = _test_accuracy(again)
    assert accuracy == pytest.approx(_row(result, "metric")["compressed"], abs=1e-6)
    return again, accuracy


def test_dynamic_int8_keeps_accuracy_and_shrinks_the_file(mlp_run, runs):
    result = mlp_run.compress(quantize="dynamic")
    assert result.path.parent == runs and "mlp-int8-dynamic-" in result.path.name
    metric = _row(result, "metric")
    assert metric["quantity"] == "test accuracy"
    assert abs(metric["compressed"] - metric["original"]) <= 0.01
    assert _row(result, "size_bytes")["ratio"] < 0.4  # int8 weights: ~4x smaller than float32
    assert {"latency_b1_ms", "latency_b64_ms", "parameters"} <= {r["key"] for r in result.table}
    info = json.loads((result.path / "compression.json").read_text())
    assert info["origin"] == str(mlp_run.path) and info["options"]["quantize"] == "dynamic"
    again, _ = _reloaded_matches(result)
    assert any(type(m).__name__ == "DynamicQuantizedLinear" or "quantized.dynamic" in type(m).__module__
               for m in again.model.modules())
    assert "Compression" in (result.path / "report.html").read_text()
    assert len(again.predict(again.data.test.x[:5].numpy())["label"]) == 5


def test_static_int8_runs_int8_kernels_within_a_few_points(mlp_run):
    result = mlp_run.compress(quantize="static", calibration_batches=4)
    metric = _row(result, "metric")
    assert abs(metric["compressed"] - metric["original"]) <= 0.04
    assert (result.path / "model.pt2").is_file() and not (result.path / "model.safetensors").exists()
    again, _ = _reloaded_matches(result)
    ops = {str(n.target) for n in again.model.graph.graph.nodes if n.op == "call_function"}
    assert any("qlinear_pointwise" in op for op in ops), ops  # oneDNN int8 matmuls, not float ones


def test_qat_fine_tunes_one_epoch_with_the_trainer(mlp_run):
    result = mlp_run.compress(quantize="qat", finetune_epochs=1)
    info = json.loads((result.path / "compression.json").read_text())
    assert len(info["finetune"]) == 1 and "train_loss" in info["finetune"][0]
    assert _row(result, "metric")["compressed"] > 0.5
    _reloaded_matches(result)


def test_iterative_magnitude_pruning_reaches_the_sparsity(mlp_run):
    result = mlp_run.compress(prune="magnitude", sparsity=0.7, iterative=2, finetune_epochs=1)
    info = json.loads((result.path / "compression.json").read_text())
    assert info["global_sparsity"] == pytest.approx(0.7, abs=0.01)
    assert set(result.layer_sparsity) == {"body.0", "body.2", "head"}  # every Linear, reported per layer
    assert len({h["round"] for h in info["finetune"]}) == 2  # one fine-tuning after each round
    nonzero = _row(result, "nonzero_parameters")
    assert nonzero["compressed"] / nonzero["original"] < 0.35
    assert _row(result, "size_zipped_bytes")["ratio"] < 0.6  # zeros only save space once compressed
    again, _ = _reloaded_matches(result)
    weights = torch.cat([m.weight.flatten() for m in again.model.modules() if isinstance(m, torch.nn.Linear)])
    assert float((weights == 0).float().mean()) == pytest.approx(0.7, abs=0.01)


def test_structured_pruning_removes_channels_for_real(runs):
    cfg = {"name": "cnn", "data": DIGITS, "model": {"family": "cnn", "channels": [8, 16], "convs_per_block": 1,
                                                   "dropout": 0.0}, "train": quick_train(epochs=1)}
    run = layerwise.train(cfg, runs_dir=runs, quiet=True)
    result = run.compress(prune="structured", sparsity=0.5)
    params = _row(result, "parameters")
    assert params["compressed"] < 0.5 * params["original"]
    assert _row(result, "size_bytes")["ratio"] < 0.6
    again, _ = _reloaded_matches(result)
    convs = [m for m in again.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8]
    assert again.model.head.out_features == 10  # the output head is never pruned


@pytest.fixture(scope="module")
def sequence_run(runs):
    cfg = {"name": "sine", "data": {"source": "timeseries", "builtin": "sine_mixture", "length": 300, "context": 12,
                                    "horizon": 2}, "task": "forecasting",
           "model": {"family": "gru", "hidden": 8}, "train": quick_train(epochs=1)}
    return layerwise.train(cfg, runs_dir=runs, quiet=True)


def test_cli_prints_the_table_and_refuses_bad_options_on_one_line(mlp_run, sequence_run, tmp_path):
    cases = {
        "ok": (["--quantize", "dynamic"], mlp_run, None),
        "both": (["--quantize", "dynamic", "--prune", "magnitude", "--sparsity", "0.5"], mlp_run,
                 ["exactly one of --quantize", "--prune"]),
        "sparsity": (["--prune", "magnitude", "--sparsity", "1.5"], mlp_run, ["--sparsity", "1.5"]),
        "static_gru": (["--quantize", "static"], sequence_run, ["--quantize static", "gru", "--quantize dynamic"]),
    }
    with ThreadPoolExecutor(2) as pool:  # each subprocess mostly waits on `import torch`
        results = {k: pool.submit(cli, "compress", run.path, *args, "--runs-dir", tmp_path / k, cwd=tmp_path)
                   for k, (args, run, _) in cases.items()}
    code, out, err = results.pop("ok").result()
    assert code == 0, err
    assert "latency p50 batch 64" in out and "test accuracy" in out
    path = out.strip().splitlines()[-1].removeprefix("run: ")
    assert layerwise.load_run(path).path.parent == tmp_path / "ok"
    for key, future in results.items():
        code, _, err = future.result()
        assert_one_line_error(code, err, *cases[key][2])
        assert run_dirs(tmp_path / key) == []  # nothing half-written


def test_dynamic_int8_of_a_recurrent_family_round_trips(sequence_run):
    result = sequence_run.compress(quantize="dynamic")
    again = layerwise.load_run(result.path)
    assert "quantized.dynamic" in type(again.model.rnn).__module__  # the GRU runs int8 kernels
    assert isinstance(again.model.head, torch.nn.Linear)  # kept float: init_state reads head.weight
    metric = _row(result, "metric")
    assert float(again.evaluate()[sequence_run.task.main_metric]) == pytest.approx(metric["compressed"], rel=1e-5)
    hidden, _ = again.model.step(again.spec.example_input(2)[:, 0], again.model.init_state(2))  # step by step too
    assert hidden.shape == (2, 8)


def test_structured_pruning_refuses_a_recurrent_family(sequence_run):
    with pytest.raises(layerwise.RunError, match="--prune structured: the gru family is a sequence model"):
        sequence_run.compress(prune="structured", sparsity=0.5)


def test_compressing_a_compressed_run_is_refused(mlp_run):
    result = mlp_run.compress(prune="magnitude", sparsity=0.5)
    with pytest.raises(layerwise.RunError, match="already compressed"):
        layerwise.load_run(result.path).compress(quantize="dynamic")


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_a_dynamic_int8_recurrent_model_still_steps_like_its_whole_sequence_form(family):
    # generation runs init_state/step; a quantized LSTM is no nn.LSTM instance, yet needs its (h, c) state
    from helpers import run_steps, sequence_inputs, sequence_spec

    from layerwise import FAMILIES
    from layerwise.models import build_model
    from layerwise.ops.quantize import quantize_dynamic

    spec = sequence_spec("tokens", 6)
    model = build_model(FAMILIES.get(family).Config(hidden=8, layers=1, embedding=8), spec).eval()
    quantized = quantize_dynamic(model, family)
    x = sequence_inputs(spec, 2)
    stepped, _ = run_steps(quantized, x)
    with torch.no_grad():
        whole = quantized.forward_sequence(x)
    # dynamic int8 scales activations per call: one step vs the whole sequence differ by rounding only
    assert (stepped - whole).abs().max() < 0.02


def test_static_int8_of_a_cnn_that_flattens_into_its_head(runs):
    # oneDNN's int8 convolutions may hand back channels-last tensors: a captured view before the head broke
    cfg = {"name": "flat", "data": DIGITS, "train": quick_train(epochs=2),
           "model": {"family": "cnn", "channels": [8, 16], "global_pool": "flatten", "head_hidden": 16, "dropout": 0.0}}
    original = layerwise.train(cfg, runs_dir=runs, quiet=True)
    result = original.compress(quantize="static", calibration_batches=2)
    _, accuracy = _reloaded_matches(result)
    assert abs(accuracy - _test_accuracy(original)) <= 0.05
