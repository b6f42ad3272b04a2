"""Self-supervised pretraining: the contrastive (SimCLR, BYOL), masked-autoencoder and masked-LM
tasks compute the losses of their papers, count hidden positions only, keep their pretext modules
through save, load and resume, hand their features to fine-tuning, and are measured by probes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import Killed, KillAt, assert_one_line_error, assert_same_weights, cli, quick_train, weights
from safetensors import safe_open

import layerwise
from layerwise import ConfigError
from layerwise.data.views import corrupt_features, mask_patches
from layerwise.tasks.contrastive import nt_xent
from layerwise.tasks.masked_autoencoder import masked_mean
from layerwise.tasks.masked_lm import IGNORE, mask_tokens
from layerwise.tools.probe import label_budget

TINY_CNN = {"family": "cnn", "channels": [8], "convs_per_block": 1, "dropout": 0.0}
DIGITS = {"source": "builtin", "name": "digits", "limit": 400}


def _digits_run(tmp_path, task: dict, name: str = "ssl", **train):
    config = {"name": name, "data": DIGITS, "model": TINY_CNN, "task": task,
              "train": quick_train(batch_size=64, lr=0.003, **train)}
    return layerwise.train(config, runs_dir=tmp_path, quiet=True)


# -- the losses ----------------------------------------------------------------------------------


def test_nt_xent_equals_a_hand_computation_on_four_samples():
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    t = 0.5
    views = [v / v.norm() for v in torch.cat([z1, z2])]  # 8 unit vectors: sample i's partner is i +- 4
    terms = []
    for i in range(8):
        partner = (i + 4) % 8
        others = [math.exp(float(views[i] @ views[k]) / t) for k in range(8) if k != i]
        terms.append(-math.log(math.exp(float(views[i] @ views[partner]) / t) / sum(others)))
    loss, correct = nt_xent(z1, z2, t)
    assert float(loss) == pytest.approx(sum(terms) / 8, rel=1e-5)
    # identical views: every view's nearest other view is its partner
    _, correct = nt_xent(z1, z1.clone(), t)
    assert bool(correct.all()) and correct.shape == (8,)


def test_masked_mean_ignores_unmasked_positions():
    errors = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, False], [False, False, True]])
    assert float(masked_mean(errors, mask)) == 3.5
    errors[~mask] = 1e6  # what the model got wrong where it could see does not count
    assert float(masked_mean(errors, mask)) == 3.5


def test_patch_masks_hide_the_ratio_in_every_sample_and_feature_views_take_other_rows_values():
    mask = mask_patches(5, 16, 0.75, torch.Generator().manual_seed(0))
    assert mask.shape == (5, 16) and mask.sum(1).tolist() == [12] * 5
    x = torch.arange(40, dtype=torch.float32).view(8, 5)  # column j holds 5 * row + j
    view = corrupt_features(x, 0.6, torch.Generator().manual_seed(1))
    assert ((view - torch.arange(5)) % 5 == 0).all()  # every value still comes from its own column
    assert (view != x).any() and (view == x).any()


def test_mask_tokens_follows_bert_and_never_chooses_padding():
    x = torch.randint(2, 50, (64, 32))
    x[:, :4] = 0  # left padding
    inputs, labels = mask_tokens(x, 0.15, mask_id=1, vocab=50, pad_id=0, generator=torch.Generator().manual_seed(0))
    chosen = labels != IGNORE
    assert not chosen[:, :4].any() and chosen.sum(1).min() >= 1
    assert torch.equal(labels[chosen], x[chosen])
    assert torch.equal(inputs[~chosen], x[~chosen])  # what is not asked about is read as it is
    share = chosen.float().mean().item() / (28 / 32)
    assert 0.12 < share < 0.18
    masked = (inputs[chosen] == 1).float().mean().item()
    assert 0.7 < masked < 0.9  # 80% read the mask token, the rest a random or the true token


# -- the tasks in the loop -----------------------------------------------------------------------


def test_a_masked_autoencoder_loss_counts_hidden_pixels_only(tmp_path):
    """Moving the decoder's output at pixels no sample hides leaves the loss as it is; moving it at a
    hidden one does not."""
    run = _digits_run(tmp_path, {"name": "masked_autoencoder", "mask_ratio": 0.5, "patch_size": 2}, epochs=1)
    task, model = run.task, run.model.eval()
    x = run.preprocessing.inputs.batch(run.data.test.x[:1])
    mask = mask_patches(1, 16, 0.5, torch.Generator().manual_seed(7))  # the task's mask for seed 7
    pixels = mask.view(1, 1, 4, 4).repeat_interleave(2, 2).repeat_interleave(2, 3).flatten()
    with torch.no_grad():
        before = float(task.masked_loss(model, x, 7)[0])
        model.pretext[-1].bias[~pixels] += 100.0
        assert float(task.masked_loss(model, x, 7)[0]) == pytest.approx(before, rel=1e-6)
        model.pretext[-1].bias[pixels.nonzero()[0]] += 100.0
        assert float(task.masked_loss(model, x, 7)[0]) > before + 10


def test_simclr_pretraining_saves_its_projection_and_fine_tuning_starts_from_its_features(tmp_path):
    run = _digits_run(tmp_path / "pre", {"name": "contrastive", "projection_dim": 16})
    metrics = run.metrics["metrics"]
    assert set(metrics) >= {"pair_accuracy", "loss"} and 0 <= metrics["pair_accuracy"] <= 1
    with safe_open(str(run.path / "model.safetensors"), framework="pt") as handle:
        assert any(name.startswith("pretext.projector.") for name in handle.keys())
    loaded = layerwise.load_run(run.path)
    x = run.preprocessing.inputs.batch(run.data.test.x[:4])
    assert torch.equal(loaded.model.forward_features(x), run.model.eval().forward_features(x))
    with pytest.raises(ConfigError, match="predicts no labels; fine-tune it"):
        loaded.task.predict(torch.zeros(2, 10))
    tuned = layerwise.train({"name": "tuned", "data": DIGITS, "model": {**TINY_CNN, "init_from": str(run.path)},
                             "train": quick_train(epochs=1, freeze=["body.*"])}, runs_dir=tmp_path / "tuned",
                            quiet=True)
    assert not hasattr(tuned.model, "pretext")  # the projection head stays behind
    pre, new = dict(run.model.named_parameters()), dict(tuned.model.named_parameters())
    assert all(torch.equal(new[k], pre[k]) for k in new if k.startswith("body."))  # loaded, then frozen


def test_byol_resumes_its_moving_average_target_exactly(tmp_path):
    config = {"name": "byol", "data": DIGITS, "model": TINY_CNN,
              "task": {"name": "contrastive", "method": "byol", "projection_dim": 16},
              "train": quick_train(epochs=3, batch_size=64, lr=0.003, checkpoint_every=3)}
    straight = layerwise.train(config, runs_dir=tmp_path / "straight", quiet=True)
    with pytest.raises(Killed):
        layerwise.train(config, runs_dir=tmp_path / "killed", quiet=True, callbacks=[KillAt(8)])
    (killed,) = [d for d in (tmp_path / "killed").iterdir() if d.is_dir()]
    resumed = layerwise.train(resume=killed, quiet=True)
    final = weights(resumed.model)
    assert any(k.startswith("pretext.target_encoder.") for k in final)
    assert_same_weights(final, weights(straight.model))
    # the target moved away from the online network (a moving average), and not into a copy of it
    online, target = final["body.0.weight"], final["pretext.target_encoder.body.0.weight"]
    assert not torch.equal(online, target)


def test_tables_pretrain_by_feature_corruption_and_masked_columns(tmp_path):
    data = {"source": "csv", "path": "examples/data/loans.csv", "target": "approved", "drop": ["applicant_id"]}
    for task in ({"name": "contrastive", "projection_dim": 8}, {"name": "masked_autoencoder"}):
        run = layerwise.train({"name": task["name"], "data": data, "model": {"family": "mlp", "hidden": [32]},
                               "task": task, "train": quick_train()}, runs_dir=tmp_path, quiet=True)
        assert math.isfinite(run.metrics["metrics"]["loss"])
    kinds = [kind for _, kind, _ in run.task.columns]
    assert "numeric" in kinds and ({"onehot", "categorical"} & set(kinds))  # sex, employment: categories


def test_a_vit_masked_autoencoder_trains_and_shows_its_reconstructions(tmp_path):
    run = _digits_run(tmp_path, {"name": "masked_autoencoder", "decoder_width": 16, "decoder_layers": 1},
                      epochs=2)
    history = [row["train_loss"] for row in run.history]
    assert history[-1] < history[0]
    vit = layerwise.train({"name": "vit-mae", "data": DIGITS, "task": {"name": "masked_autoencoder",
                           "decoder_width": 16, "decoder_layers": 1},
                           "model": {"family": "vit", "width": 16, "layers": 1, "heads": 2, "patch_size": 2},
                           "train": quick_train(batch_size=64)}, runs_dir=tmp_path, quiet=True)
    masked, rebuilt = vit.task.reconstructions(vit.model.eval(), vit.preprocessing.inputs.batch(vit.data.test.x[:3]))
    assert masked.shape == rebuilt.shape == (3, 1, 8, 8) and (masked == 0.5).float().mean() > 0.5
    html = vit.report().read_text()
    assert "Masked reconstructions" in html and "Representation" in html


def test_masked_lm_loss_is_the_cross_entropy_of_the_chosen_tokens(tmp_path):
    data = {"source": "text", "path": "examples/data/sonnets.txt", "block_size": 32, "stride": 32}
    model = {"family": "transformer", "width": 32, "heads": 2, "layers": 1, "max_len": 32}
    run = layerwise.train({"name": "mlm", "data": data, "model": model, "task": "masked_lm",
                           "train": quick_train(epochs=1)}, runs_dir=tmp_path, quiet=True)
    assert 0 <= run.metrics["metrics"]["masked_accuracy"] <= 1
    task, net = run.task, run.model.eval()
    x = run.data.test.x[:4]
    with torch.no_grad():
        loss, chosen, _ = task._step(net, x, 3)
        inputs, labels = mask_tokens(x, 0.15, task.mask_id, run.spec.vocab_size, None, torch.Generator().manual_seed(3))
        logits = net.pretext(net.forward_sequence(inputs))
        keep = labels != IGNORE
        assert float(loss) == pytest.approx(float(F.cross_entropy(logits[keep], labels[keep])), rel=1e-5)
    with pytest.raises(ConfigError, match="model.causal: a masked language model reads both sides"):
        layerwise.train({"name": "x", "data": data, "model": {**model, "causal": True, "pooling": "last"},
                         "task": "masked_lm", "train": quick_train(epochs=1)}, runs_dir=tmp_path, quiet=True)
    with pytest.raises(ConfigError, match="token ids have no random views"):
        lines = {"source": "text", "path": "examples/data/play_lines.csv", "label_column": "label"}
        layerwise.train({"name": "x", "data": lines, "model": model, "task": "contrastive",
                         "train": quick_train(epochs=1)}, runs_dir=tmp_path, quiet=True)


# -- probes -------------------------------------------------------------------------------------


def test_label_budgets_are_stratified_with_every_class():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    chosen = label_budget(y, 0.1, seed=0)
    assert np.bincount(y[chosen]).tolist() == [5, 3, 2, 1]  # 10% of each class, at least one
    assert len(set(chosen.tolist())) == len(chosen)
    assert label_budget(y, 1.0, seed=0).tolist() == list(range(100))


def test_probe_compares_the_features_with_raw_inputs_and_random_weights(tmp_path):
    run = _digits_run(tmp_path, {"name": "contrastive", "projection_dim": 16})
    result = run.probe(budgets=[0.05, 1.0], draws=1)
    names = [row["representation"] for row in result.rows]
    assert names == ["this run's features"] * 2 + ["raw inputs"] * 2 + ["same architecture, random weights"] * 2
    full = [row for row in result.rows if row["budget"] == 1.0]
    assert all(row["labels"] == len(run.data.train) and 0.1 < row["linear"] <= 1 for row in full)
    raw = next(row for row in full if row["representation"] == "raw inputs")
    assert raw["features"] == 64  # 8 x 8 pixels
    code, out, err = cli("probe", run.path, "--budget", "0.1", "--no-baselines", cwd=tmp_path)
    assert code == 0, err
    assert "| this run's features |" in out and "raw inputs" not in out
    assert_one_line_error(*cli("probe", run.path, "--budget", "2", cwd=tmp_path)[::2], "budget")
