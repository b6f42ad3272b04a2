"""The step interface: a task with its own optimization logic plugs into the one training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layerwise.data import load_data
from layerwise.models import build_model
from layerwise.runs.config import load_config
from layerwise.runs.training import loaders
from layerwise.tasks import StepOutput
from layerwise.tasks.classification import Classification
from layerwise.train import Checkpoint, Trainer


class TwoOptimizerTask(Classification):
    """Like a GAN's alternating updates: the body and the head get separate optimizers and lrs."""

    manual_optimization = True

    def configure_optimizers(self, model):
        head = list(model.head.parameters())
        head_ids = {id(p) for p in head}
        body = [p for p in model.parameters() if id(p) not in head_ids]
        return {"body": body, "head": {"params": head, "lr": 0.05, "optimizer": "sgd"}}

    def training_step(self, model, batch, ctx):
        x, y = batch
        outputs = model(x)
        loss = F.cross_entropy(outputs, y)
        ctx.backward(loss)
        ctx.step("body")
        ctx.step("head")
        return StepOutput(loss.detach(), len(y), outputs, self.batch_sums(outputs, y))


def _setup(tmp_path):
    cfg = load_config({"data": {"source": "builtin", "name": "iris"}, "model": {"family": "mlp", "dropout": 0},
                       "train": {"epochs": 3, "batch_size": 16, "lr": 0.01, "progress": False}})
    bundle = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, bundle.spec)
    task = TwoOptimizerTask(bundle.spec, cfg.train, bundle.preprocessor, bundle.train.y)
    train_loader, val_loader = loaders(bundle, cfg, torch.device("cpu"))
    return cfg, model, task, train_loader, val_loader


def test_manual_optimization_runs_both_optimizers_in_the_one_loop(tmp_path):
    cfg, model, task, train_loader, val_loader = _setup(tmp_path)
    trainer = Trainer(model, task, cfg.train, callbacks=[Checkpoint(tmp_path / "ck")], eval_cfg=cfg.evaluate)
    assert set(trainer.optimizers) == {"body", "head"}
    assert isinstance(trainer.optimizers["head"], torch.optim.SGD)
    assert trainer.optimizers["head"].param_groups[0]["lr"] == 0.05
    assert trainer.optimizers["body"].param_groups[0]["lr"] == 0.01
    history = trainer.fit(train_loader, val_loader)
    assert len(history) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert trainer.global_step == 3 * len(train_loader)
    # both optimizers' states are in the checkpoint, so a resume continues both
    state = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert set(state["optimizers"]) == {"body", "head"}
    assert state["optimizers"]["body"]["state"], "AdamW moments of the body must be saved"


def test_manual_optimization_resume_is_exact(tmp_path):
    cfg, model, task, train_loader, val_loader = _setup(tmp_path)
    Trainer(model, task, cfg.train, eval_cfg=cfg.evaluate).fit(train_loader, val_loader)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    cfg2, model2, task2, train2, val2 = _setup(tmp_path)
    short = cfg2.train.model_copy(update={"epochs": 1})
    Trainer(model2, task2, short, callbacks=[Checkpoint(tmp_path / "a")], eval_cfg=cfg2.evaluate).fit(train2, val2)
    cfg3, model3, task3, train3, val3 = _setup(tmp_path)
    resumed = Trainer(model3, task3, cfg3.train, eval_cfg=cfg3.evaluate)
    resumed.resume_from(tmp_path / "a" / "last.pt")
    resumed.fit(train3, val3)
    for key, value in straight.items():
        assert torch.equal(value, model3.state_dict()[key]), key
