"""The cnn_rnn family (LRCN: a per-frame CNN, then a GRU/LSTM) and the builtin digit_sequences data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, quick_train, run_dirs, run_steps, write_yaml

from layerwise import ModelError
from layerwise.data import load_data
from layerwise.data.spec import DataSpec
from layerwise.models import build_model
from layerwise.runs.config import load_config

VIDEO = DataSpec(kind="video", input_shape=(5, 1, 8, 8), target="class", num_classes=3)


def _model(**config):
    torch.manual_seed(0)
    cfg = load_config({"model": {"family": "cnn_rnn", "channels": [4, 8], "hidden": 12, **config}}).model
    return build_model(cfg, VIDEO)


def _video(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, *VIDEO.input_shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config, width", [({}, 12), ({"cell": "lstm", "layers": 2}, 12),
                                           ({"bidirectional": True, "pooling": "mean"}, 24)])
def test_shapes(config, width):
    model = _model(**config)
    x = _video(4)
    assert model.embed(x).shape == (4, 5, 8)  # one embedding per frame, channels[-1] wide
    assert model.forward_sequence(x).shape == (4, 5, width)
    assert model.forward_features(x).shape == (4, width) and model.num_features == width
    assert model(x).shape == (4, 3)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_step_by_step_equals_the_whole_sequence(cell):
    model = _model(cell=cell, layers=2)
    with torch.no_grad():
        model(_video(8, seed=2))  # a training-mode pass moves batch norm's running statistics off 0/1
    model.eval()
    x = _video(3)
    with torch.no_grad():
        whole = model.forward_sequence(x)
        stepped, _ = run_steps(model, x)  # model.step on one (B, C, H, W) frame at a time
        assert stepped.shape == whole.shape == (3, 5, 12)
        assert torch.allclose(stepped, whole, atol=1e-5)
        assert torch.allclose(model.forward_head(stepped[:, -1]), model(x), atol=1e-5)


def test_bidirectional_cannot_step():
    model = _model(bidirectional=True)
    with pytest.raises(ModelError, match="model.bidirectional: a bidirectional cnn_rnn"):
        model.init_state(2)


def _digit_lookup() -> dict[bytes, int]:
    """Each of sklearn's 1,797 digit images (all distinct) as uint8 pixels → its digit."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return {img.tobytes(): int(t) for img, t in zip(pixels, digits.target)}


def test_digit_sequences_label_is_the_sum_of_the_digits():
    cfg = load_config({"data": {"name": "digit_sequences", "sequence_length": 3, "n_sequences": 400},
                       "model": {"family": "cnn_rnn"}}).data
    bundle = load_data(cfg)
    assert bundle.spec.kind == "video" and bundle.spec.input_shape == (3, 1, 8, 8)
    assert bundle.spec.class_names == [str(total) for total in range(28)]  # sums of three digits: 0 .. 27
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (288, 32, 80)  # 400 by the 0.1/0.2 fractions
    lookup = _digit_lookup()
    images = {}
    for name in ("train", "val", "test"):
        split = bundle.split(name)
        assert split.x.dtype == torch.uint8
        frames = split.x.numpy()[:, :, 0]  # (N, T, 8, 8)
        digits = np.array([[lookup[f.tobytes()] for f in seq] for seq in frames])  # KeyError: not a digit image
        assert np.array_equal(split.y.numpy(), digits.sum(axis=1)), name
        images[name] = {f.tobytes() for seq in frames for f in seq}
    # frames come from disjoint pools of images: no test or val sequence shows a training image
    assert not images["train"] & images["test"] and not images["train"] & images["val"]
    assert not images["val"] & images["test"]
    assert bundle.spec.num_classes == 28  # every possible sum of three digits, 0 .. 27
    again = load_data(cfg)  # seeded: the same config draws the same sequences
    assert torch.equal(again.train.x, bundle.train.x) and torch.equal(again.test.y, bundle.test.y)


def test_trains_end_to_end_on_digit_sequences_via_the_cli(run_cli, tmp_path):
    cfg = {"name": "seq", "data": {"name": "digit_sequences", "sequence_length": 2, "n_sequences": 2000},
           "model": {"family": "cnn_rnn", "channels": [16, 32], "hidden": 64},
           "train": quick_train(epochs=16, batch_size=16, lr=0.003)}
    write_yaml(tmp_path / "seq.yaml", cfg)
    code, _, err = run_cli("train", "seq.yaml", "--runs-dir", "runs", "--quiet")
    assert code == 0, err
    (run,) = run_dirs(tmp_path / "runs")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test"
    # the most common sum of two digits is 0.1 of the data; this run scores about 0.6 (the plateau of the first epochs ends when the CNN
    # starts telling digits apart, then accuracy climbs)
    assert metrics["metrics"]["accuracy"] > 0.3, metrics["metrics"]


def test_bad_sequence_length_is_a_one_line_config_error(run_cli, tmp_path):
    write_yaml(tmp_path / "seq.yaml", {"data": {"name": "digit_sequences", "sequence_length": 1},
                                       "model": {"family": "cnn_rnn"}, "train": quick_train()})
    code, _, err = run_cli("train", "seq.yaml", "--runs-dir", "runs")
    assert_one_line_error(code, err, "data.sequence_length", "greater than or equal to 2", "received 1")
    assert not run_dirs(tmp_path / "runs")


def test_cnn_rnn_refuses_tabular_data():
    tabular = DataSpec(kind="tabular", input_shape=(4,), target="class", num_classes=3)
    config = load_config({"model": {"family": "cnn_rnn"}}).model
    with pytest.raises(ModelError) as caught:
        build_model(config, tabular)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("model.family: 'cnn_rnn' does not accept tabular inputs; families that do: ")
    assert "mlp" in message and "cnn_rnn" not in message.split("families that do:")[1]
