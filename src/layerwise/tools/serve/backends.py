"""Predictors behind the server: the run's PyTorch model, or an ONNX Runtime session on its export.

Both take a batch in the run's stored input form (uint8 images, standardized feature rows, token
ids), apply the run's own ``preprocessing.inputs.batch`` (normalisation) exactly as ``Run.predict``
does, and turn the model's outputs into predictions with the run's task (softmax and argmax, or the
inverse target scaling), so the two backends differ only in what runs the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...core.errors import ConfigError, require
from ...data.kinds import input_kind

__all__ = ["BACKENDS", "OnnxBackend", "TorchBackend", "ensure_onnx", "make_backend", "onnx_path"]

BACKENDS = ("torch", "onnx", "onnx-int8")


class TorchBackend:
    """The run's model in eval mode under ``torch.inference_mode`` on the run's device."""

    name = "torch"

    def __init__(self, run):
        from ...core.device import resolve_device

        self.run = run
        self.device = resolve_device(run.config.train.device)
        self.model = run.model.to(self.device).eval()

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            inputs = self.run.preprocessing.inputs.batch(x.to(self.device), train=False)
            out = self.run.task.predict(self.model(inputs))
        return {k: v.cpu().numpy() for k, v in out.items()}


def onnx_path(run, int8: bool = False) -> Path:
    """Where ``layerwise export RUN --format onnx [--int8 ...]`` writes the file, and where the server looks."""
    return run.path / "export" / ("model.int8.onnx" if int8 else "model.onnx")


def ensure_onnx(run, int8: bool = False) -> Path:
    """The run's ONNX file, exported (and verified) by :func:`layerwise.tools.export.export_run` when it does
    not exist yet; ``int8``: the onnxruntime-quantized file (static for image runs, whose time goes into
    convolutions; dynamic otherwise)."""
    path = onnx_path(run, int8)
    if not path.is_file():
        from ..export import export_run

        if int8:
            export_run(run, "onnx", int8="static" if input_kind(run.spec).picture else "dynamic")
        else:
            export_run(run, "onnx", out=path)
    return path


class OnnxBackend:
    """An onnxruntime ``InferenceSession`` (CPU) on ``RUN/export/model.onnx`` (or ``model.int8.onnx``),
    exported if missing."""

    def __init__(self, run, int8: bool = False):
        ort = require("onnxruntime", "export")
        self.run = run
        self.name = "onnx-int8" if int8 else "onnx"
        self.path = ensure_onnx(run, int8)
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        inputs = self.run.preprocessing.inputs.batch(x, train=False)
        logits = self.session.run(None, {self.input_name: inputs.cpu().numpy()})[0]
        out = self.run.task.predict(torch.from_numpy(logits))
        return {k: v.numpy() for k, v in out.items()}


def make_backend(run, name: str):
    """``torch``, ``onnx`` or ``onnx-int8`` for ``run``; an unknown name is a one-line ConfigError."""
    if name not in BACKENDS:
        raise ConfigError(f"--backend: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return TorchBackend(run) if name == "torch" else OnnxBackend(run, int8=name == "onnx-int8")
