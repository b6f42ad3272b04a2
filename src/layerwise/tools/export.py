"""Export a trained run to ONNX, TorchScript or a ``torch.export`` ExportedProgram, verified by parity.

Every file is checked before it is reported: it is loaded back with the runtime a consumer would use
(onnxruntime's ``InferenceSession`` for ONNX, ``torch.jit.load`` / ``torch.export.load`` for the
others) and run on real inputs from the run's own test split, preprocessed as the model sees them,
at batch 1 and at a larger batch (the batch dimension is dynamic). The largest absolute difference
from PyTorch eager must be at most 1e-4 in float32.

The preprocessing (normalisation statistics, tokenizer, class names) travels with the file: in the
ONNX ``metadata_props`` and, for the two PyTorch formats, in a sidecar ``.json`` next to the file.

An ONNX export can also be quantized to int8 with onnxruntime's own quantization (``int8="static"``:
weights per channel and activations calibrated on batches of the training split, in the QDQ format
onnxruntime's CPU kernels fuse; ``int8="dynamic"``: weights only, activations scaled per batch at run
time). Weights use 7 of the 8 bits, so the integer kernels of CPUs without VNNI cannot saturate and
the file gives the same answers on every x86 CPU. An int8 file cannot meet the float32 bound, so it is verified differently: it is run on up to
1,000 rows of the test split next to the float32 file, and the top-1 agreement (classification) and
the largest absolute difference are reported; a file that agrees on fewer than 90% of the rows is
refused, as a broken quantization rather than a lossy one.

TorchScript is produced by ``torch.jit.trace``, not ``torch.jit.script``: the families use Python
control flow over config values (layer lists, unrolled recurrences) that scripting would have to
type-check, while a trace records exactly the operations eager runs; the batch size stays symbolic
because no family branches on it. The trace is verified at a second batch size, which catches a
batch size frozen into the graph.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.errors import RunError, require
from ..runs.tools import ToolOptions, option, register_tool

__all__ = ["FORMATS", "INT8_MODES", "TOLERANCE", "ExportResult", "export_model", "export_run", "read_metadata",
           "sample_inputs"]

FORMATS = ("onnx", "torchscript", "exported-program")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
TOLERANCE = 1e-4  # float32 parity bound between the exported file and PyTorch eager
LARGE_BATCH = 5  # the second verification batch: proves the batch dimension is dynamic
INT8_MODES = ("static", "dynamic")
INT8_MIN_AGREEMENT = 0.9  # below this a quantized classifier is broken, not merely lossy


@dataclass
class ExportResult:
    """Where the file went and how closely it matches PyTorch eager."""

    format: str
    path: Path
    max_abs_diff: float  # over batch 1 and the larger batch
    batches: tuple[int, ...]
    metadata_path: Path | None = None  # the sidecar .json (torchscript, exported-program)
    metadata: dict[str, str] = field(default_factory=dict)
    int8: dict | None = None  # for an int8 file: mode, float32 file, rows checked, agreement, sizes


def sample_inputs(run, batch: int = LARGE_BATCH) -> torch.Tensor:
    """A batch of the run's test split (else val, else train), preprocessed as the model sees it."""
    bundle = run.data
    split = next((s for s in (bundle.test, bundle.val, bundle.train) if s is not None and len(s) > 0), None)
    if split is None:
        raise RunError(f"{run.path}: the run's data has no rows to verify the export on")
    x = split.x[:batch]
    if len(x) < batch:  # a tiny split: repeat rows so the larger batch still differs from batch 1
        x = x.repeat((-(-batch // len(x)),) + (1,) * (x.dim() - 1))[:batch]
    return run.preprocessing.inputs.batch(x, train=False)


def run_metadata(run) -> dict[str, str]:
    """String metadata a consumer needs to use the file alone (ONNX metadata_props are strings)."""
    data = json.loads((run.path / "data.json").read_text())
    return {
        "layerwise.family": run.config.model.family,
        "layerwise.task": str(run.config.task),
        "layerwise.spec": json.dumps(data["spec"]),
        "layerwise.preprocessing": json.dumps(data["preprocessing"]),
        "layerwise.class_names": json.dumps(run.spec.class_names),
        "layerwise.input": "input: preprocessed batch, first dimension dynamic (see layerwise.preprocessing)",
    }


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata recorded with an exported file: ONNX metadata_props or the sidecar ``.json``."""
    path = Path(path)
    if path.suffix == ".onnx":
        onnx = require("onnx", "export")
        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(path.with_suffix(path.suffix + ".json").read_text())


class ExportOptions(ToolOptions):
    format: str = option("onnx", "onnx, torchscript or exported-program")
    out: Path | None = option(None, "file to write (default: RUN/export/)")
    opset: int | None = option(None, "ONNX opset version (default: the exporter's)", ge=7)
    int8: str | None = option(None, "also quantize the ONNX file to int8 with onnxruntime: static (calibrated on "
                              "training data) or dynamic")
    calibration_batches: int = option(8, "int8 static: training batches that calibrate the activation ranges",
                                      ge=1)


@register_tool("export", ExportOptions)
def export_run(run, options: ExportOptions) -> ExportResult:
    """Export a trained RUN (dynamic batch), verified against PyTorch on its own test inputs.

    Exports in ``format`` (into ``RUN/export/`` unless ``out``). ``int8`` ("static" or "dynamic",
    ONNX only) also quantizes the verified float32 file with onnxruntime; the result then describes
    the int8 file, with the float32 one beside it."""
    format, out, opset, int8, calibration_batches = (options.format, options.out, options.opset, options.int8,
                                                     options.calibration_batches)
    _check_format(format)
    if int8 is not None:
        if format != "onnx":
            raise RunError(f"export: int8 quantization is done by onnxruntime, so it needs --format onnx (got {format})")
        if int8 not in INT8_MODES:
            raise RunError(f"export: unknown int8 mode {int8!r}; choose one of {', '.join(INT8_MODES)}")
    path = Path(out) if out is not None else run.path / "export" / f"model{SUFFIX[format]}"
    fp32_path = path
    if int8 is not None:  # RUN/export/model.onnx stays the float32 file, model.int8.onnx beside it
        fp32_path = path if out is None else path.with_name(path.stem + ".fp32.onnx")
        path = path.with_name("model.int8.onnx") if out is None else path
    result = export_model(run.model, format, fp32_path, sample_inputs(run), metadata=run_metadata(run), opset=opset)
    if int8 is None:
        return result
    return _quantize_onnx(run, result, path, int8, calibration_batches)


def export_model(model: torch.nn.Module, format: str, path: str | Path, example: torch.Tensor, *,
                 metadata: dict[str, str] | None = None, opset: int | None = None) -> ExportResult:
    """Export ``model`` to ``path`` and verify it on ``example`` (a preprocessed batch of >= 2 rows)
    and on its first row; raise a one-line RunError if it cannot be exported or does not match."""
    _check_format(format)
    if len(example) < 2:
        raise RunError("export: the verification batch needs at least 2 rows to check the dynamic batch dimension")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    metadata = dict(metadata or {})
    family = getattr(getattr(model, "config", None), "family", type(model).__name__)
    try:
        diff, batches = _export_and_verify(model, family, format, path, example, opset, metadata)
    except BaseException:
        path.unlink(missing_ok=True)  # never leave an unverified file where a consumer would pick it up
        raise
    sidecar = None
    if format != "onnx":
        sidecar = path.with_suffix(path.suffix + ".json")
        sidecar.write_text(json.dumps(metadata, indent=2))
    return ExportResult(format, path, diff, batches, sidecar, metadata)


def _export_and_verify(model, family: str, format: str, path: Path, example: torch.Tensor, opset: int | None,
                       metadata: dict[str, str]) -> tuple[float, tuple[int, ...]]:
    """Write the file, run it at batch 1 and at the full example batch; return (max abs diff, batches)."""
    # the exporters and runtimes raise many unrelated types (torch._dynamo, onnxscript, jit, onnxruntime);
    # each means the family's graph cannot be captured or run in this format: say which and why, in one line
    def failure(exc: Exception, what: str) -> RunError:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        return RunError(f"export: the {family} model {what} ({type(exc).__name__}: {reason})")

    try:
        with torch.no_grad(), _quiet():
            loaded = _EXPORTERS[format](model, path, example, opset, metadata)
    except RunError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise failure(exc, f"cannot be exported to {format}") from None
    diff = 0.0
    batches = (1, len(example))
    with torch.no_grad():
        for batch in batches:
            x = example[:batch]
            expected = model(x).float()
            try:
                got = loaded(x)
            except Exception as exc:  # noqa: BLE001
                raise failure(exc, f"exported to {format} fails to run at batch {batch}") from None
            if tuple(got.shape) != tuple(expected.shape):
                raise RunError(f"export: the {format} file gives shape {tuple(got.shape)} at batch {batch}, "
                               f"PyTorch gives {tuple(expected.shape)}")
            diff = max(diff, (got.float() - expected).abs().max().item())
    if not diff <= TOLERANCE:
        raise RunError(f"export: the {format} file differs from PyTorch by max abs diff {diff:.3g} "
                       f"(> {TOLERANCE:g}); it was not kept")
    return diff, batches


@contextlib.contextmanager
def _quiet():
    # the exporters log progress and warn about optional ops (torchvision) a layerwise model never uses;
    # a failure still surfaces as an exception
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise RunError(f"export: unknown format {format!r}; choose one of {', '.join(FORMATS)}")


# -- exporters: each writes the file and returns a callable running the file as a consumer would -------------


def _onnx(model, path: Path, example: torch.Tensor, opset: int | None, metadata: dict[str, str]):
    onnx = require("onnx", "export")
    ort = require("onnxruntime", "export")
    require("onnxscript", "export")  # the dynamo exporter builds the graph with it
    kwargs = {} if opset is None else {"opset_version": opset}
    batch = torch.export.Dim("batch", min=1)
    # dynamo=True is torch's current exporter; the batch dimension is declared dynamic so one file
    # serves any batch size
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input"], output_names=["output"],
                                dynamic_shapes=({0: batch},), verbose=False, **kwargs)
    program.save(str(path))
    proto = onnx.load(str(path))
    used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and used != opset:  # the version converter gives up quietly on some ops
        raise RunError(f"export: --opset {opset} is not reachable for this model (the exporter wrote opset {used}); "
                       f"use --opset {used} or leave --opset out")
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.cpu().numpy()})[0])


def _torchscript(model, path: Path, example: torch.Tensor, opset, metadata):
    traced = torch.jit.trace(model, (example,), check_trace=False)
    torch.jit.save(traced, str(path))
    return torch.jit.load(str(path))


def _exported_program(model, path: Path, example: torch.Tensor, opset, metadata):
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return torch.export.load(str(path)).module()


def _quantize_onnx(run, fp32: ExportResult, path: Path, mode: str, calibration_batches: int) -> ExportResult:
    """Quantize a verified float32 ONNX file to int8 with onnxruntime, check it against the float32 file."""
    require("onnx", "export")
    ort = require("onnxruntime", "export")
    quantization = require("onnxruntime.quantization", "export")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = path.with_name(path.stem + ".pre.onnx")
    pre = run.preprocessing.inputs
    try:
        with _quiet():
            # onnxruntime's recommended first step: shape inference and graph optimisation, so the
            # quantizer sees fused Conv/MatMul nodes with known shapes
            quant_pre_process(str(fp32.path), str(prepared))
            # reduce_range: weights in 7 bits ([-64, 64]), not 8. x86 CPUs without VNNI (AVX2, AVX-512
            # before Cascade Lake) multiply uint8 activations by int8 weights with VPMADDUBSW, which adds
            # each pair of products into a saturating int16: 2 x 255 x 127 overflows, 2 x 255 x 64 does
            # not. With 8-bit weights the same file agreed with float32 on 99.3% of MNIST test images on
            # a VNNI CPU and on 94.0% on an AVX2 one; with 7 bits, 98.9% on both, at the same speed
            # (BENCHMARKS.md, "int8 on CPUs without VNNI"). The agreement checked here holds wherever
            # the file is deployed.
            if mode == "dynamic":
                quantization.quantize_dynamic(str(prepared), str(path), weight_type=quantization.QuantType.QInt8,
                                              reduce_range=True)
            else:
                train = run.data.train
                pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
                rows = pick[: calibration_batches * 64]
                batches = [pre.batch(train.x[rows[i:i + 64]], train=False).numpy() for i in range(0, len(rows), 64)]
                quantization.quantize_static(
                    str(prepared), str(path), _Calibration(batches), quant_format=quantization.QuantFormat.QDQ,
                    per_channel=True, reduce_range=True, activation_type=quantization.QuantType.QUInt8,
                    weight_type=quantization.QuantType.QInt8)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types; each means this graph cannot be quantized
        path.unlink(missing_ok=True)
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise RunError(f"export: onnxruntime cannot quantize the {run.config.model.family} model to int8 ({mode}): "
                       f"{type(exc).__name__}: {reason}") from None
    finally:
        prepared.unlink(missing_ok=True)
    onnx = require("onnx", "export")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in {**fp32.metadata, "layerwise.quantization": f"int8 {mode} (onnxruntime)"}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))

    bundle = run.data
    split = next((s for s in (bundle.test, bundle.val, bundle.train) if s is not None and len(s) > 0))
    x = pre.batch(split.x[:1000], train=False).numpy()
    outputs = []
    for file in (fp32.path, path):
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    reference, quantized = outputs
    check = {"mode": mode, "fp32_path": str(fp32.path), "rows": len(x),
             "max_abs_diff": float(abs(quantized - reference).max()),
             "size_fp32": fp32.path.stat().st_size, "size_int8": path.stat().st_size}
    if run.spec.target == "class" and reference.ndim == 2:
        check["agreement"] = float((quantized.argmax(1) == reference.argmax(1)).mean())
        if check["agreement"] < INT8_MIN_AGREEMENT:
            path.unlink(missing_ok=True)
            raise RunError(f"export: the int8 ({mode}) file agrees with float32 on only {check['agreement']:.1%} of "
                           f"{len(x)} rows (< {INT8_MIN_AGREEMENT:.0%}); it was not kept; try --int8 "
                           f"{'dynamic' if mode == 'static' else 'static'}")
    return ExportResult("onnx", path, check["max_abs_diff"], (len(x),), None, dict(fp32.metadata), check)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over preprocessed training batches."""

    def __init__(self, batches):
        self._batches = iter(batches)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"input": batch}


_EXPORTERS = {"onnx": _onnx, "torchscript": _torchscript, "exported-program": _exported_program}


@export_run.printer
def _print(result: ExportResult, options: ExportOptions) -> None:
    print(f"{result.format}{' int8 ' + options.int8 if options.int8 else ''}: {result.path}")
    if result.int8 is None:
        print(f"max abs diff vs PyTorch (batch {' and '.join(map(str, result.batches))}): {result.max_abs_diff:.3g}")
        return
    check = result.int8
    print(f"float32 file: {check['fp32_path']} ({check['size_fp32']:,} bytes; int8 {check['size_int8']:,} bytes, "
          f"{check['size_fp32'] / check['size_int8']:.1f}x smaller)")
    agreement = f"top-1 agreement {check['agreement']:.2%}, " if "agreement" in check else ""
    print(f"int8 vs float32 on {check['rows']} test rows: {agreement}max abs diff {check['max_abs_diff']:.3g}")
