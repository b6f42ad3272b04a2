"""The autoencoder and vae families with their reconstruction and vae tasks, on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import quick_train

import layerwise
from layerwise import ConfigError, ModelError, RunError
from layerwise.data.spec import DataSpec
from layerwise.models import FAMILIES, build_model
from layerwise.tasks.reconstruction import Reconstruction
from layerwise.tasks.vae import VAEEvaluator, importance_weighted_nll

IMAGE = DataSpec(kind="image", input_shape=(1, 7, 9), target="class", num_classes=3, class_names=["a", "b", "c"])
TABULAR = DataSpec(kind="tabular", input_shape=(5,), target="class", num_classes=2)
DIGITS = {"source": "builtin", "name": "digits", "limit": 600}


def _model(family: str, spec: DataSpec, **kw):
    torch.manual_seed(0)
    return build_model(FAMILIES.get(family).Config(**kw), spec)


@pytest.mark.parametrize("architecture", ["dense", "conv"])
def test_autoencoder_shapes(architecture):
    model = _model("autoencoder", IMAGE, architecture=architecture, bottleneck=5, channels=[4, 8], hidden=[16])
    x = torch.randn(4, *IMAGE.input_shape)
    assert model.encode(x).shape == (4, 5)
    assert model.reconstruct(x).shape == x.shape  # odd sizes come back exactly
    assert model(x).shape == (4, IMAGE.num_outputs)  # the contract's read-out of the code
    assert model.num_features == 5


@pytest.mark.parametrize("spec, kw", [(IMAGE, {"architecture": "conv", "channels": [4]}), (TABULAR, {})])
def test_vae_shapes_and_sampling(spec, kw):
    model = _model("vae", spec, latent=3, hidden=[16], **kw)
    x = torch.randn(4, *spec.input_shape)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (4, 3)
    assert model.decode(mu).shape == x.shape
    samples = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (6, *spec.input_shape)
    assert model.likelihood == ("bernoulli" if spec.kind == "image" else "gaussian")
    if model.likelihood == "bernoulli":
        assert samples.min() >= 0 and samples.max() <= 1  # pixel intensities


def test_user_errors_are_one_line():
    with pytest.raises(ModelError, match="model.likelihood: 'bernoulli'.*use likelihood: gaussian"):
        _model("vae", TABULAR, likelihood="bernoulli")
    with pytest.raises(ModelError, match="model.architecture: 'conv' needs image inputs"):
        _model("autoencoder", TABULAR, architecture="conv")
    with pytest.raises(ConfigError, match="masking probability must be below 1"):
        layerwise.load_config({"model": {"family": "autoencoder", "denoising": {"noise": "mask", "level": 1.0}}})
    with pytest.raises(ModelError, match="task 'reconstruction' needs a model with encode and decode"):
        Reconstruction(IMAGE, None, None).check_model(_model("mlp", IMAGE))


class _Identity:
    """Preprocessing stand-in: no pixel conversion (the errors stay in the model's units)."""
    inputs = None


def test_denoising_corrupts_only_in_training():
    model = _model("autoencoder", TABULAR, hidden=[8], bottleneck=3, denoising={"noise": "mask", "level": 0.5})
    clean = _model("autoencoder", TABULAR, hidden=[8], bottleneck=3)
    clean.load_state_dict(model.state_dict())
    task = Reconstruction(TABULAR, None, _Identity())
    x = torch.randn(16, 5)
    batch = (x, torch.zeros(16, dtype=torch.long))
    with torch.no_grad():
        noisy_train = task.training_step(model, batch, None).loss
        clean_train = task.training_step(clean, batch, None).loss
        eval_loss = task.evaluation_step(model, batch).loss
    expected = (model.reconstruct(x) - x).pow(2).mean()
    assert torch.allclose(eval_loss, expected) and torch.allclose(clean_train, expected)
    assert not torch.allclose(noisy_train, expected)  # the input was corrupted, the target was not
    gaussian = _model("autoencoder", TABULAR, hidden=[8], bottleneck=3, denoising={"noise": "gaussian", "level": 0.1})
    noise = gaussian.corrupt(x, torch.Generator().manual_seed(0)) - x
    assert 0.05 < float(noise.std()) < 0.15


def _train(family: str, epochs: int = 4, **model):
    # no task key: the family implies it
    cfg = {"name": family, "data": DIGITS, "model": {"family": family, **model},
           "train": quick_train(epochs=epochs, lr=0.003, batch_size=64)}
    return layerwise.train(cfg, quiet=True, runs_dir=_train.runs_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    _train.runs_dir = tmp_path_factory.mktemp("runs")
    return {"vae": _train("vae", hidden=[64], latent=4),
            "autoencoder": _train("autoencoder", architecture="conv", channels=[8, 16], bottleneck=8,
                                  denoising={"noise": "gaussian", "level": 0.2})}


def test_the_family_implies_the_task(runs):
    assert runs["vae"].config.task == "vae"
    assert runs["autoencoder"].config.task == "reconstruction"


def test_losses_decrease_on_digits(runs):
    vae = runs["vae"].history
    assert vae[-1]["train_loss"] < vae[0]["train_loss"]
    assert vae[-1]["val_elbo"] > vae[0]["val_elbo"]
    ae = runs["autoencoder"].history
    assert ae[-1]["train_mse"] < ae[0]["train_mse"] and ae[-1]["val_mse"] < ae[0]["val_mse"]


def test_elbo_is_minus_recon_plus_kl(runs):
    for row in runs["vae"].history:
        assert math.isclose(row["train_elbo"], -(row["train_recon"] + row["train_kl"]), rel_tol=1e-6)
        assert row["train_kl"] >= 0
    m = runs["vae"].metrics["metrics"]
    assert math.isclose(m["elbo"], -(m["recon"] + m["kl"]), rel_tol=1e-9)
    assert math.isclose(m["nll_bound"], -m["elbo"]) and math.isclose(m["loss"], -m["elbo"], rel_tol=1e-5)  # beta 1
    ev = VAEEvaluator()
    ev.update(torch.tensor([[3.0, 1.0], [5.0, 0.5]]))
    assert ev.compute() == {"elbo": -4.75, "recon": 4.0, "kl": 0.75, "nll_bound": 4.75}


def test_importance_weighting_tightens_the_bound(runs):
    run = runs["vae"]
    x = run.preprocessing.inputs.batch(run.data.test.x[:64])
    model = run.model.cpu().eval()
    gen = torch.Generator().manual_seed(0)
    iw = importance_weighted_nll(model, run.preprocessing, x, k=64, generator=gen).mean()
    assert float(iw) <= run.task.predict_batch(model, x)["score"].mean() + 0.05


def test_runs_load_back_and_evaluate(runs):
    for run in runs.values():
        loaded = layerwise.load_run(run.path)
        result = loaded.evaluate()
        for key, value in run.metrics["metrics"].items():
            assert math.isclose(result[key], value, rel_tol=1e-5), key
        assert "misclassified" not in result.details
        report = (run.path / "report.html").read_text()
        assert "Reconstructions" in report or "VAE reconstructions" in report
        with pytest.raises(RunError, match="predict_batch"):  # until run.predict routes through the task
            loaded.predict(loaded.data.test.x[:3].numpy())
    errors = runs["autoencoder"].task.predict_batch(runs["autoencoder"].model.cpu(),
                                                     runs["autoencoder"].preprocessing.inputs.batch(
                                                         runs["autoencoder"].data.test.x[:5]))["error"]
    assert errors.shape == (5,) and (errors > 0).all()


def test_tabular_gaussian_vae_trains(tmp_path):
    cfg = {"data": {"name": "iris"}, "model": {"family": "vae", "hidden": [16], "latent": 2},
           "train": quick_train(epochs=3, lr=0.01)}
    run = layerwise.train(cfg, quiet=True, runs_dir=tmp_path)
    assert run.config.task == "vae" and math.isfinite(run.metrics["metrics"]["elbo"])
