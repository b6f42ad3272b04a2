"""Compressing a trained run: int8 quantization (dynamic, static, QAT) and pruning (magnitude,
structured), each written as a NEW run next to the original with a comparison table.

    >>> result = layerwise.load_run("runs/digits-20261122-101500").compress(quantize="dynamic")  # doctest: +SKIP
    >>> result.path, result.table                                                                 # doctest: +SKIP

The new run holds the original's ``config.yaml`` and ``data.json``, the compressed model
(``model.safetensors``; for graph-mode int8 ``model.pt2``, the ExportedProgram to deploy, and
``int8.safetensors``, what the run is loaded from) and ``compression.json``: the origin run, the
method and options, what is needed to rebuild the model (pruned shapes), per-layer sparsity and the
table. :func:`layerwise.load_run` loads it like any run, so evaluate, predict and report work, and
it reads safetensors and JSON only (never the ExportedProgram, which would unpickle).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...core.errors import ConfigError, RunError
from ...core.sections import register_section
from ...runs.compressed import COMPRESSION_FILE
from ...runs.tools import ToolOptions, option, register_tool

__all__ = ["PRUNE_MODES", "QUANTIZE_MODES", "CompressResult", "compress_run"]

QUANTIZE_MODES = ("dynamic", "static", "qat")
PRUNE_MODES = ("magnitude", "structured")


@dataclass
class CompressResult:
    """The new run's directory, what was done, and the comparison rows (quantity/original/compressed/ratio)."""

    path: Path
    method: str
    options: dict[str, Any]
    table: list[dict[str, Any]]
    layer_sparsity: dict[str, float] = field(default_factory=dict)

    def rich_table(self):
        """The comparison as a rich Table (what the CLI prints)."""
        from rich.table import Table

        table = Table(title=f"{self.method} vs the original", header_style="bold")
        for col in ("quantity", "original", "compressed", "ratio"):
            table.add_column(col, justify="left" if col == "quantity" else "right")
        for row in self.table:
            table.add_row(row["quantity"], _fmt(row["original"]), _fmt(row["compressed"]),
                          _ratio(row["ratio"]))
        return table


def _fmt(value: Any) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"×{value:.3g}"


def _validate(quantize, prune, sparsity, iterative, finetune_epochs, calibration_batches) -> None:
    if (quantize is None) == (prune is None):
        raise ConfigError("compress: give exactly one of --quantize (dynamic, static, qat) or --prune "
                          "(magnitude, structured)")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ConfigError(f"--quantize: unknown mode '{quantize}'; choose one of: {', '.join(QUANTIZE_MODES)}")
    if prune is not None and prune not in PRUNE_MODES:
        raise ConfigError(f"--prune: unknown mode '{prune}'; choose one of: {', '.join(PRUNE_MODES)}")
    if prune is not None and (sparsity is None or not 0 < sparsity < 1):
        raise ConfigError(f"--sparsity: pruning needs a fraction strictly between 0 and 1 (e.g. 0.5); "
                          f"received {sparsity}")
    if quantize is not None and sparsity is not None:
        raise ConfigError("--sparsity: only applies to --prune; drop it for --quantize")
    if iterative < 1:
        raise ConfigError(f"--iterative: needs at least 1 round; received {iterative}")
    if quantize is not None and iterative != 1:
        raise ConfigError("--iterative: only applies to --prune; drop it for --quantize")
    if finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs: must be 0 or more; received {finetune_epochs}")
    if quantize in ("dynamic", "static") and finetune_epochs:
        raise ConfigError(f"--finetune-epochs: {quantize} quantization does not train; use --quantize qat to fine-tune")
    if calibration_batches < 1:
        raise ConfigError(f"--calibration-batches: needs at least 1; received {calibration_batches}")


def _finetuner(run, bundle, epochs: int, history: list[dict[str, Any]]) -> Callable[[torch.nn.Module], None] | None:
    """Fine-tuning through the Foundation's Trainer with the run's task, loaders and config (CPU)."""
    if epochs <= 0:
        return None
    from ...runs.prepare import loaders
    from ...train import Trainer

    train_cfg = run.config.train.model_copy(update={"epochs": epochs, "early_stopping": None, "max_steps": None,
                                                    "max_time": None, "device": "cpu", "progress": False,
                                                    "checkpoint_every": None, "precision": "fp32"})
    cfg = run.config.model_copy(update={"train": train_cfg})
    device = torch.device("cpu")

    def finetune(model: torch.nn.Module) -> None:
        train_loader, val_loader = loaders(bundle, cfg, device)
        trainer = Trainer(model, run.task, cfg.train, device=device, eval_cfg=cfg.evaluate)
        round_ = 1 + (history[-1]["round"] if history else 0)
        history.extend({"round": round_, **logs} for logs in trainer.fit(train_loader, val_loader))

    return finetune


def _calibration(run, bundle, batches: int) -> list[torch.Tensor]:
    """``batches`` batches of the training split, preprocessed as in training (no augmentation)."""
    from ...data.loader import BatchLoader

    loader = BatchLoader(bundle.train, run.config.train.batch_size, shuffle=True, seed=run.config.train.seed,
                         transform=run.preprocessing.inputs.batch)
    out = []
    for x, _ in loader:
        out.append(x)
        if len(out) == batches:
            break
    return out


def _compress_model(run, original, quantize, prune, sparsity, iterative, example, calibration_batches, finetune,
                    info: dict[str, Any]):
    """The compressed model (and, for int8, its tensors to save); records its format and files in ``info``."""
    from ...ops import prune as pruning
    from ...ops import quantize as quant

    family = run.config.model.family
    if quantize == "dynamic":
        compressed = quant.quantize_dynamic(original, family)
        try:
            with torch.no_grad():
                compressed(example)
        except Exception as exc:  # noqa: BLE001 - any failure of a quantized forward is reported
            raise RunError(f"--quantize dynamic: the quantized {family} model does not run "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        info["format"], info["model_file"] = "dynamic-int8", "model.safetensors"
        return compressed, quant.dynamic_tensors(compressed)
    if quantize is not None:
        if quantize == "static":
            graph = quant.quantize_static(original, _calibration(run, run.data, calibration_batches), example)
        else:
            graph = quant.quantize_qat(original, example, finetune)
        # the run loads from the prepared graph's state (safetensors); model.pt2 is for deployment
        info["format"], info["model_file"], info["state_file"] = "pt2e-int8", "model.pt2", "int8.safetensors"
        return graph.converted, graph.state
    from ...models import build_model
    from ...models.lora import merge_lora

    model = run.load_model().cpu()  # a fresh copy: pruning edits it in place
    if prune == "magnitude":
        compressed = pruning.prune_magnitude(model, sparsity, iterative, finetune)
        info["format"] = "dense"
    else:
        compressed = pruning.prune_structured(model, sparsity, iterative, example, finetune)
        info["format"] = "pruned"
        fresh = merge_lora(build_model(run.config.model, run.spec))  # the architecture run.load_model() gives
        info["pruned_shapes"] = pruning.pruned_shapes(fresh, compressed)
    info["model_file"] = "model.safetensors"
    info["layer_sparsity"] = pruning.layer_sparsity(compressed)
    info["global_sparsity"] = pruning.global_sparsity(compressed)
    return compressed, None


class CompressOptions(ToolOptions):
    quantize: str | None = option(None, "int8 quantization: dynamic, static (calibrated) or qat (fine-tuned)")
    prune: str | None = option(None, "pruning: magnitude (global, unstructured) or structured (removes channels)")
    sparsity: float | None = option(None, "pruning: fraction of weights / channels to remove, in (0, 1)")
    iterative: int = option(1, "pruning rounds towards the sparsity")
    finetune_epochs: int = option(0, "epochs of fine-tuning after each pruning round, or of quantization-aware "
                                  "training")
    calibration_batches: int = option(8, "static: training batches that calibrate the activation ranges")
    runs_dir: Path | None = option(None, "where to write the new run (default: beside RUN)")
    repeats: int = option(30, "timed forward passes per latency figure", cli=False)


@register_tool("compress", CompressOptions)
def compress_run(run, options: CompressOptions) -> CompressResult:
    """Quantize or prune a trained RUN into a new run; prints its path and the size/latency/accuracy table.

    Compresses ``run`` (a Run or its path) into a new run directory beside it (or in ``runs_dir``).

    Exactly one of ``quantize`` (dynamic, static, qat) or ``prune`` (magnitude, structured, with
    ``sparsity`` in (0, 1), ``iterative`` rounds each followed by ``finetune_epochs`` epochs).
    ``qat`` fine-tunes ``finetune_epochs`` epochs (1 when 0 is given: QAT without training is static).
    """
    from ...runs.run import Run, load_run
    from ...runs.training import _write_json
    from ...runs.rundir import create_run_dir

    quantize, prune, sparsity, iterative, finetune_epochs, calibration_batches, runs_dir, repeats = (
        options.quantize, options.prune, options.sparsity, options.iterative, options.finetune_epochs,
        options.calibration_batches, options.runs_dir, options.repeats)
    _validate(quantize, prune, sparsity, iterative, finetune_epochs, calibration_batches)
    run = run if isinstance(run, Run) else load_run(run)
    if (run.path / COMPRESSION_FILE).is_file():
        origin = json.loads((run.path / COMPRESSION_FILE).read_text()).get("origin", "the original run")
        raise RunError(f"{run.path} is already compressed; compress the original run ({origin}) instead")
    if quantize == "qat" and finetune_epochs == 0:
        finetune_epochs = 1
    bundle = run.data
    # scored on the test split; a run without one on validation, else (with neither) on training data
    split = next((name for name in ("test", "val") if getattr(bundle, name) is not None and len(getattr(bundle, name))),
                 "train")
    original = run.model.cpu().eval()
    example = run.preprocessing.inputs.batch(bundle.split(split).x[:2], False, None)  # capture/trace input
    history: list[dict[str, Any]] = []
    finetune = _finetuner(run, bundle, finetune_epochs, history)
    mode = quantize or prune
    method = f"int8 {mode}" if quantize else f"{mode} pruning {sparsity:g}"
    options = {"quantize": quantize, "prune": prune, "sparsity": sparsity, "iterative": iterative,
               "finetune_epochs": finetune_epochs,
               "calibration_batches": calibration_batches if quantize == "static" else None}
    info: dict[str, Any] = {"origin": str(run.path), "method": method, "options": options,
                            "created": _dt.datetime.now().isoformat(timespec="seconds"),
                            "torch_version": torch.__version__}

    # everything that can fail on the model happens before the new directory exists
    compressed, tensors = _compress_model(run, original, quantize, prune, sparsity, iterative, example,
                                          calibration_batches, finetune, info)
    if history:
        info["finetune"] = history

    suffix = f"int8-{quantize}" if quantize else f"pruned-{prune}-{round(sparsity * 100)}"
    copies = {name: (lambda tmp, name=name: shutil.copyfile(run.path / name, tmp)) for name in ("config.yaml", "data.json")}
    path, lock = create_run_dir(Path(runs_dir) if runs_dir is not None else run.path.parent,
                                f"{run.config.name}-{suffix}", copies)
    try:
        model_file = path / info["model_file"]
        _save(compressed, tensors, info, path, run, example)
        _write_json(path / COMPRESSION_FILE, info)
        from .measure import comparison, measure

        new = Run(path, trust_code=run.trust_code)
        new._data = bundle
        reloaded = new.model  # measured as loaded back, so the table is what users of the run get
        before = measure(original, run.path / "model.safetensors", run, bundle, split, repeats)
        # a graph-mode int8 model keeps every weight, only in int8: count them as the original's
        same = (before["parameters"], before["nonzero_parameters"]) if quantize in ("static", "qat") else None
        after = measure(reloaded, model_file, new, bundle, split, repeats, same)
        info.update(original=before, compressed=after, table=comparison(before, after))
        _write_json(path / COMPRESSION_FILE, info)
        scores = new._evaluate_split(bundle, split, torch.device("cpu"))
        training = dict(run.metrics.get("training", {}))
        training["compression"] = {"origin": str(run.path), "method": method}
        metrics = {"split": split, "metrics": dict(scores), "details": scores.details, "training": training}
        if run.metrics.get("split") == split and run.metrics.get("baselines"):
            # fitted on the same training rows and scored on the same split: the compressed network
            # stands beside the same baselines (nothing of them is saved to refit)
            metrics["baselines"] = run.metrics["baselines"]
        _write_json(path / "metrics.json", metrics)
        new.report()
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # no half-written run
        raise
    finally:
        lock.release()
    return CompressResult(path, method, options, info["table"], info.get("layer_sparsity", {}))


def _save(compressed, tensors, info: dict[str, Any], path: Path, run, example: torch.Tensor) -> None:
    """The compressed model's files in the new run directory ``path``, as ``info`` names them."""
    from safetensors.torch import save_file

    from ...core.io import atomic_write
    from ...runs.training import save_model

    fmt, model_file, family = info["format"], path / info["model_file"], run.config.model.family
    if fmt == "dynamic-int8":  # int8 values, scales and zero points as plain tensors
        metadata = {"format": "layerwise-int8-dynamic", "family": family}
        atomic_write(model_file, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    elif fmt == "pt2e-int8":
        from ...ops.quantize import save_program

        metadata = {"format": "layerwise-int8-pt2e", "mode": info["options"]["quantize"], "family": family}
        atomic_write(path / info["state_file"], lambda tmp: save_file(tensors, tmp, metadata=metadata))
        save_program(compressed, example, model_file)
    else:
        save_model(model_file, compressed, run.config, run.spec)


@register_section("compression")
def _report_section(run) -> tuple[str, str] | None:
    path = run.path / COMPRESSION_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    esc = html.escape
    options = ", ".join(f"{k}={v}" for k, v in info.get("options", {}).items() if v is not None)
    parts = [f"<p>{esc(info.get('method', ''))} of <code>{esc(info.get('origin', ''))}</code> ({esc(options)}).</p>"]
    rows = info.get("table", [])
    if rows:
        body = "".join(f"<tr><td>{esc(r['quantity'])}</td><td>{esc(_fmt(r['original']))}</td>"
                       f"<td>{esc(_fmt(r['compressed']))}</td><td>{esc(_ratio(r['ratio']))}</td></tr>" for r in rows)
        parts.append(f"<table><thead><tr><th>quantity</th><th>original</th><th>compressed</th><th>ratio</th></tr>"
                     f"</thead><tbody>{body}</tbody></table>")
    if info.get("layer_sparsity"):
        body = "".join(f"<tr><td>{esc(k)}</td><td>{v:.4f}</td></tr>" for k, v in info["layer_sparsity"].items())
        parts.append(f"<p>global sparsity of Linear/Conv weights: {info.get('global_sparsity', 0):.4f}</p>"
                     f"<table><thead><tr><th>layer</th><th>sparsity</th></tr></thead><tbody>{body}</tbody></table>")
    return "Compression", "".join(parts)


@compress_run.printer
def _print(result: CompressResult, options: CompressOptions) -> None:
    from ...core.console import console

    console().print(result.rich_table())
    print(f"run: {result.path}")
