"""The gan family and the adversarial task: shapes, both players train, both losses, conditioning,
resume with both optimizers' states, a run loads back."""

from __future__ import annotations

import pytest
import torch

import layerwise
from layerwise import ModelError
from layerwise.data.spec import DataSpec
from layerwise.models import FAMILIES, build_model
from layerwise.runs.config import load_config
from layerwise.runs.training import prepare
from layerwise.tasks.adversarial import gan_losses

DIGITS = {"source": "builtin", "name": "digits", "limit": 300}


def _spec(shape=(1, 8, 8), kind="image") -> DataSpec:
    return DataSpec(kind=kind, input_shape=shape, target="class", num_classes=3, class_names=["a", "b", "c"])


def _config(**kw):
    return {"data": dict(DIGITS), "model": {"family": "gan", "channels": [32, 16], **kw.pop("model", {})},
            "train": {"epochs": 1, "batch_size": 32, "progress": False, **kw.pop("train", {})}, **kw}


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 12, 10), (1, 7, 7)])
@pytest.mark.parametrize("conditional", [False, True])
def test_shapes_follow_the_input(shape, conditional):
    cfg = FAMILIES.get("gan").Config(conditional=conditional, spectral_norm=conditional, channels=[32, 16, 8])
    model = build_model(cfg, _spec(shape))
    assert model.generate(5).shape == (5, *shape)
    logit, classes = model.discriminate(torch.randn(4, *shape), torch.arange(4) % 3 if conditional else None)
    assert logit.shape == (4,) and classes.shape == (4, 3)
    assert model(torch.randn(2, *shape)).shape == (2, 3)  # the contract: D's class head


def test_28x28_upsamples_from_7x7():
    model = build_model(FAMILIES.get("gan").Config(channels=[32, 16, 8]), _spec((1, 28, 28)))
    assert (model.generator.h0, model.generator.w0) == (7, 7)
    ups = [m for m in model.generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == 2


def test_tabular_uses_the_mlp_variant():
    model = build_model(FAMILIES.get("gan").Config(conditional=True), _spec((5,), "tabular"))
    assert model.variant == "mlp"
    assert model.generate(6, labels=2).shape == (6, 5)
    with pytest.raises(ModelError, match="model.variant"):
        build_model(FAMILIES.get("gan").Config(variant="conv"), _spec((5,), "tabular"))


def test_bad_labels_are_one_line_errors():
    plain = build_model(FAMILIES.get("gan").Config(), _spec())
    with pytest.raises(ModelError, match="not conditional"):
        plain.generate(2, labels=1)
    cond = build_model(FAMILIES.get("gan").Config(conditional=True), _spec())
    with pytest.raises(ModelError, match=r"labels: expected 2 class ids in \[0, 3\)"):
        cond.generate(2, labels=[0, 7])


def test_losses():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([-3.0, 0.5])
    sp = torch.nn.functional.softplus
    assert torch.allclose(gan_losses("non_saturating", real, fake), sp(-real).mean() + sp(fake).mean())
    assert torch.allclose(gan_losses("non_saturating", None, fake), sp(-fake).mean())
    assert torch.allclose(gan_losses("hinge", real, fake), torch.tensor((0 + 2) / 2 + (0 + 1.5) / 2))
    assert torch.allclose(gan_losses("hinge", None, fake), torch.tensor(1.25))


@pytest.mark.parametrize("loss", ["non_saturating", "hinge"])
def test_no_task_key_trains_both_players(loss, tmp_path):
    cfg = _config(model={"loss": loss}, train={"max_steps": 4})
    before = prepare(load_config(cfg)).model.state_dict()  # the same seed: the weights train starts from
    run = layerwise.train(cfg, runs_dir=tmp_path, quiet=True)
    assert run.config.task == "adversarial"  # the family implied it
    after = run.model.state_dict()
    for prefix in ("generator.", "disc.", "critic."):
        changed = [k for k, v in before.items() if k.startswith(prefix) and v.is_floating_point()
                   and not torch.equal(v, after[k])]
        assert changed, f"{prefix} did not train"
    row = run.history[-1]
    for key in ("train_d_loss", "train_g_loss", "train_d_x", "train_d_g_z"):
        assert key in row and row[key] == row[key]
    for key in ("d_accuracy", "d_x", "d_g_z", "d_loss", "g_loss"):
        assert key in run.metrics["metrics"]
    assert 0.0 <= run.metrics["metrics"]["d_accuracy"] <= 1.0


def test_conditional_generator_follows_the_label():
    torch.manual_seed(0)
    model = build_model(FAMILIES.get("gan").Config(conditional=True, channels=[32, 16]), _spec())
    z = torch.randn(4, model.config.latent)
    model.eval()
    with torch.no_grad():
        a = model.generate_from(z, torch.zeros(4, dtype=torch.long))
        b = model.generate_from(z, torch.full((4,), 2))
        assert not torch.allclose(a, b)  # same noise, another class: another sample
        assert torch.equal(model.generate(4, labels=1, seed=3), model.generate(4, labels=1, seed=3))
    # G's class code is one number per class, not as wide as z (a wide code let G ignore z on MNIST)
    assert model.class_embed.embedding_dim == model.num_classes
    # gradients reach the class embedding through G
    model.train()
    model.generate_from(z, torch.arange(4) % 3).square().mean().backward()
    assert model.class_embed.weight.grad.abs().sum() > 0


def test_resume_keeps_both_optimizers(tmp_path):
    cfg = _config(model={"conditional": True, "lr_d": 1e-3}, train={"max_steps": 3, "epochs": 3})
    run = layerwise.train(cfg, runs_dir=tmp_path, quiet=True)
    first = torch.load(run.path / "checkpoints" / "last.pt", weights_only=True)
    assert set(first["optimizers"]) == {"generator", "discriminator"}
    assert first["global_step"] == 3
    for name in ("generator", "discriminator"):
        assert first["optimizers"][name]["state"], f"{name} Adam moments missing"
        assert first["optimizers"][name]["state"][0]["step"] == 3
    assert first["optimizers"]["discriminator"]["param_groups"][0]["lr"] == 1e-3
    assert first["optimizers"]["generator"]["param_groups"][0]["betas"] == (0.5, 0.999)

    # resume to 6 steps: both optimizers continue from their saved moments
    resumed = layerwise.train(resume=run.path, quiet=True, train__max_steps=6)
    second = torch.load(resumed.path / "checkpoints" / "last.pt", weights_only=True)
    assert second["global_step"] == 6
    for name in ("generator", "discriminator"):
        assert second["optimizers"][name]["state"][0]["step"] == 6  # 3 saved + 3 more, not a fresh 3
        assert not torch.equal(second["optimizers"][name]["state"][0]["exp_avg"],
                               first["optimizers"][name]["state"][0]["exp_avg"])


def test_run_loads_back_and_generates(tmp_path):
    run = layerwise.train(_config(model={"conditional": True}, train={"max_steps": 2}), runs_dir=tmp_path, quiet=True)
    loaded = layerwise.load_run(run.path)
    assert loaded.config.task == "adversarial"
    a, b = run.model.generate(10, labels=4, seed=1), loaded.model.generate(10, labels=4, seed=1)
    assert a.shape == (10, 1, 8, 8) and torch.equal(a, b)
    assert "GAN samples" in (run.path / "report.html").read_text()
    again = loaded.evaluate(split="test")
    assert again["d_accuracy"] == pytest.approx(run.metrics["metrics"]["d_accuracy"])


def test_adversarial_task_refuses_a_model_without_a_generator(tmp_path):
    with pytest.raises(ModelError, match="model.family: task 'adversarial' needs a generator"):
        layerwise.train({"data": dict(DIGITS), "model": {"family": "cnn"}, "task": "adversarial",
                         "train": {"max_steps": 1, "progress": False}}, runs_dir=tmp_path, quiet=True)
    assert not (tmp_path).exists() or not any(tmp_path.iterdir())  # refused before any file was written
