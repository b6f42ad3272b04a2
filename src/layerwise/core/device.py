"""The device a run uses, and mixed precision on it."""

from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError

__all__ = ["resolve_device", "autocast_context"]


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA device is available; use 'auto' or 'cpu'")
    return device


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast when asked; a no-op context otherwise (no cost per step in fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
