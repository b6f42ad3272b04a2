"""Regression: mean squared error on standardized targets, metrics on the original scale."""

from __future__ import annotations

import torch.nn.functional as F

from . import Task, register_task


@register_task("regression")
class Regression(Task):
    target = "numeric"
    main_metric = "rmse"
    greater_is_better = {"r2": True}

    def loss(self, outputs, y):
        y = y.reshape(outputs.shape).to(outputs.dtype)
        return F.mse_loss(outputs.float(), y.float()), y.shape[0]

    def batch_sums(self, outputs, y):
        return {"rmse": self._squared_error(outputs, y)}

    def summarize(self, sums, count):
        return {"rmse": (sums["rmse"] / max(count, 1e-12)) ** 0.5} if "rmse" in sums else {}

    def _squared_error(self, outputs, y):
        scaler = self.preprocessing.scaler
        pred, true = scaler.inverse(outputs.detach().float()), scaler.inverse(y.reshape(outputs.shape).float())
        return ((pred - true) ** 2).mean(1).sum()

    def predict(self, outputs):
        return {"value": self.preprocessing.scaler.inverse(outputs.float())}

    def evaluator(self, eval_cfg):
        from .evaluation import RegressionEvaluator

        return RegressionEvaluator(self.spec.num_targets, self.preprocessing.scaler)
