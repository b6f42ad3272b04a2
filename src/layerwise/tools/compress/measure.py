"""What a compression costs and gains: parameters, size on disk, latency, accuracy and energy.

Latency is the median (p50) of timed repetitions after a warm-up, at batch 1 and batch 64, in this
process with the thread count as it is (``torch.get_num_threads()`` is recorded beside it). Size is
the bytes of the saved model file, and the same file zlib-compressed: pruned zeros only save space
once the file is compressed (or stored sparse), and the table says so honestly.
"""

from __future__ import annotations

import statistics
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...data.loader import BatchLoader
from ...tasks.evaluation import evaluate_model

__all__ = ["COLUMNS", "comparison", "latency_ms", "measure", "parameter_count", "zipped_size"]

# (key, label) of the comparison table, in order
COLUMNS = [("parameters", "parameters"), ("nonzero_parameters", "non-zero parameters"),
           ("size_bytes", "size on disk (bytes)"), ("size_zipped_bytes", "size zipped (bytes)"),
           ("latency_b1_ms", "latency p50 batch 1 (ms)"), ("latency_b64_ms", "latency p50 batch 64 (ms)"),
           ("metric", "metric"), ("energy_j_per_1000", "energy per 1,000 predictions (J)")]


def zipped_size(path: Path) -> int:
    """Bytes of ``path`` after zlib (deflate, level 6): what a zip of the file would take."""
    return len(zlib.compress(Path(path).read_bytes(), 6))


def parameter_count(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters), counting the int8 weights of dynamic-quantized layers too."""
    from ...ops.quantize import _walk

    total = nonzero = 0
    seen: set[int] = set()  # a tied weight counts once
    for _, module, dynamic in _walk(model):
        if not dynamic:
            tensors = [p for p in module.parameters(recurse=False) if id(p) not in seen]
            seen.update(id(p) for p in tensors)
        elif isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            tensors = [t for t in module._weight_bias() if t is not None]
        else:  # LSTM / GRU
            tensors = [*module.get_weight().values(), *module.get_bias().values()]
        for t in tensors:
            total += t.numel()
            nonzero += int(((t.dequantize() if t.is_quantized else t) != 0).sum())
    return total, nonzero


def latency_ms(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``model(x)`` in milliseconds over ``repeats`` calls after ``warmup`` calls."""
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _energy_per_1000(model: nn.Module, x: torch.Tensor) -> dict[str, Any] | None:
    """Joules per 1,000 predictions and how they were measured (layerwise.ops.energy's meter: RAPL
    counters when readable, else a CPU-time estimate), over at least 1,000 predictions."""
    from ...ops.energy import EnergyMeter

    rounds = -(-1000 // len(x))
    with torch.inference_mode(), EnergyMeter(torch.device("cpu")) as meter:
        for _ in range(rounds):
            model(x)
    kwh = meter.result.get("energy_kwh")
    if kwh is None:
        return None
    return {"energy_j_per_1000": kwh * 3.6e6 * 1000 / (rounds * len(x)), "energy_method": meter.result.get("method")}


def measure(model: nn.Module, model_file: Path, run, bundle, split: str, repeats: int,
            parameters: tuple[int, int] | None = None) -> dict[str, Any]:
    """One row of the comparison: ``run`` gives the task, preprocessing and evaluation settings."""
    model = model.cpu().eval()
    device = torch.device("cpu")
    transform = run.preprocessing.inputs.batch
    data = bundle.split(split)
    batch = next(iter(BatchLoader(data, 64, transform=transform, device=device)))[0]
    if len(batch) < 64:  # a small split: repeat rows so batch 64 means 64
        batch = batch.repeat((-(-64 // len(batch)),) + (1,) * (batch.dim() - 1))[:64]
    total, nonzero = parameters or parameter_count(model)
    loader = BatchLoader(data, run.config.evaluate.batch_size, transform=transform, device=device)
    scores = evaluate_model(model, run.task, loader, run.config.evaluate)
    metric = run.task.main_metric
    row = {"parameters": total, "nonzero_parameters": nonzero, "size_bytes": Path(model_file).stat().st_size,
           "size_zipped_bytes": zipped_size(model_file),
           "latency_b1_ms": latency_ms(model, batch[:1], repeats),
           "latency_b64_ms": latency_ms(model, batch, max(5, repeats // 3)),
           "metric": float(scores[metric]), "metric_name": f"{split} {metric}", "threads": torch.get_num_threads()}
    row.update(_energy_per_1000(model, batch) or {})
    return row


def comparison(original: dict[str, Any], compressed: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{quantity, original, compressed, ratio}``; ratio is compressed / original."""
    rows = []
    for key, label in COLUMNS:
        if key not in original or key not in compressed:
            continue
        a, b = original[key], compressed[key]
        name = original["metric_name"] if key == "metric" else label
        if key == "energy_j_per_1000":
            name = f"{label}, {original.get('energy_method')}"
        rows.append({"quantity": name, "key": key, "original": a, "compressed": b,
                     "ratio": (b / a) if isinstance(a, (int, float)) and a else None})
    return rows
