"""The FastAPI application: routes, request models, the guards in front of them and the batcher's lifespan.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at runtime,
and the request model is a class built per run inside :func:`create_app`.
"""

import asyncio
import contextlib
import datetime as _dt
import gc
import io
import os
import re
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ...core.errors import ConfigError, DataError, require
from .backends import BACKENDS, make_backend
from .batching import BatcherClosed, MicroBatcher
from .guards import Admission, BearerAuth, BodyLimit, Held, read_token
from .metrics import CountRequests, ServerMetrics
from .schema import InputError, InputSchema

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_CONCURRENCY", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_QUEUE",
           "DEFAULT_MAX_ROWS", "DEFAULT_TIMEOUT_S", "ENV", "app_from_env", "create_app"]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_ROWS = 256
# 64 requests held: room for 32 busy clients twice over; the memory they can pin is bounded by
# max_queue x max_body_bytes (512 MiB of bodies at the defaults), parsed JSON a few times that
DEFAULT_MAX_QUEUE = 64
DEFAULT_TIMEOUT_S = 30.0  # as long as a graceful shutdown waits: a request is never held longer
# threads decoding uploads (and, apart, converting JSON rows): each decodes one image of at most
# max_pixels at a time (about 8 bytes a pixel at its peak: RGBA and the converted copy), so 2 x 16.8
# Mpx bounds decoding at about 0.3 GiB; more threads than cores would only slow the event loop down
DEFAULT_MAX_CONCURRENCY = 2
DEFAULT_MAX_PIXELS = 4096 * 4096  # 16.8 Mpx: a 12-16 Mpx photo fits; a 30000x30000 "bomb" is refused unread
# settings for app_from_env(): the factory uvicorn imports in each worker when --workers > 1
ENV = {"run": "LAYERWISE_SERVE_RUN", "backend": "LAYERWISE_SERVE_BACKEND", "max_batch": "LAYERWISE_SERVE_MAX_BATCH",
       "max_wait_ms": "LAYERWISE_SERVE_MAX_WAIT_MS", "max_body_bytes": "LAYERWISE_SERVE_MAX_BODY_BYTES",
       "max_rows": "LAYERWISE_SERVE_MAX_ROWS", "max_queue": "LAYERWISE_SERVE_MAX_QUEUE",
       "timeout_s": "LAYERWISE_SERVE_TIMEOUT_S", "max_concurrency": "LAYERWISE_SERVE_MAX_CONCURRENCY",
       "max_pixels": "LAYERWISE_SERVE_MAX_PIXELS", "token_file": "LAYERWISE_SERVE_TOKEN_FILE",
       "trust": "LAYERWISE_SERVE_TRUST"}
# each setting's type and default, for app_from_env
SETTINGS = {"backend": (str, "torch"), "max_batch": (int, 64), "max_wait_ms": (float, 5.0),
            "max_body_bytes": (int, DEFAULT_MAX_BODY_BYTES), "max_rows": (int, DEFAULT_MAX_ROWS),
            "max_queue": (int, DEFAULT_MAX_QUEUE), "timeout_s": (float, DEFAULT_TIMEOUT_S),
            "max_concurrency": (int, DEFAULT_MAX_CONCURRENCY), "max_pixels": (int, DEFAULT_MAX_PIXELS)}


def check_settings(backend: str, max_batch: int, max_wait_ms: float, max_body_bytes: int, max_rows: int,
                   max_queue: int = DEFAULT_MAX_QUEUE, timeout_s: float = DEFAULT_TIMEOUT_S,
                   max_concurrency: int = DEFAULT_MAX_CONCURRENCY, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """One-line ConfigErrors for bad server settings, before anything is loaded."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    for key, value, low in (("--max-batch", max_batch, 1), ("--max-wait-ms", max_wait_ms, 0),
                            ("--max-body-mb", max_body_bytes, 1), ("--max-rows", max_rows, 1),
                            ("--max-queue", max_queue, 1), ("--max-concurrency", max_concurrency, 1),
                            ("--max-pixels", max_pixels, 1)):
        if value < low:
            raise ConfigError(f"{key}: must be at least {low}, got {value}")
    if not timeout_s > 0:
        raise ConfigError(f"--timeout-s: must be more than 0, got {timeout_s}")


def _as_run(run):
    from ...runs.run import Run, load_run

    return run if isinstance(run, Run) else load_run(run)


def _created(run) -> str | None:
    weights = run.path / "model.safetensors"
    if not weights.is_file():
        return None
    stamp = _dt.datetime.fromtimestamp(weights.stat().st_mtime, tz=_dt.timezone.utc)
    return stamp.isoformat(timespec="seconds")


def _no_absolute_paths(value: Any) -> Any:
    """``value`` with every absolute path shortened to its last part (a python family's
    ``/home/me/nets/model.py:Net`` becomes ``model.py:Net``): public answers do not map the server's disk."""
    if isinstance(value, dict):
        return {k: _no_absolute_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_absolute_paths(v) for v in value]
    if isinstance(value, str) and _ABSOLUTE.match(value):
        return re.split(r"[\\/]", value)[-1]
    return value


_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")  # POSIX, home, Windows drive or share


def model_card(run) -> dict[str, Any]:
    """Family, configuration, size and training metrics of the run (``GET /metadata``'s ``model``)."""
    metrics = run.metrics
    training = metrics.get("training", {})
    parameters = training.get("parameters")
    if parameters is None:
        parameters = sum(p.numel() for p in run.model.parameters())
    return {"name": run.config.name, "family": run.config.model.family, "task": run.config.task,
            "config": _no_absolute_paths(run.config.model.model_dump(mode="json")), "parameters": int(parameters),
            "metrics": metrics.get("metrics", {}), "metrics_split": metrics.get("split"),
            "training": {k: training[k] for k in ("duration_s", "epochs_run", "device", "layerwise_version")
                         if k in training},
            "created": _created(run)}


def _yield_cpu() -> None:
    """Lower the calling thread's CPU priority (nice +10; Linux, where a thread has a nice value of its
    own): the threads decoding uploads then give way to the event loop and the forward passes, so a
    flood of large images slows other uploads down, not ``/health`` or the JSON requests."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # not permitted, or not supported: decode at the usual priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class _Refused(Exception):
    """An uploaded file the server will not take: ``status`` 413 (too many pixels) or 422 (unreadable)."""

    def __init__(self, status: int, index: int, message: str):
        super().__init__(message)
        self.status, self.index = status, index


def _decode_uploads(uploads: list["_Upload"], size: tuple[int, int], channels: int, max_pixels: int,
                    cancelled: threading.Event) -> np.ndarray | None:
    """Uploaded files as uint8 (N, C, H, W), decoded, converted and resized exactly as ``Run.predict``
    reads an image file, one file at a time in a conversion thread (Pillow releases the GIL while it
    decodes, so the event loop keeps answering). The pixel budget is checked on each header before
    decoding. Returns None as soon as ``cancelled`` is set (the request timed out)."""
    from ...data.images import ImageTooLarge, load_images

    pixels = []
    for i, upload in enumerate(uploads):
        if cancelled.is_set():
            return None
        try:
            pixels.append(load_images([upload], size, channels, max_pixels=max_pixels))
        except ImageTooLarge as exc:
            raise _Refused(413, i, f"{exc}; send a smaller image (it is resized to {size[1]}x{size[0]} anyway)") \
                from None
        except DataError:
            raise _Refused(422, i, f"{upload}: not a readable image") from None
    return np.concatenate(pixels)


def create_app(run, backend: str = "torch", max_batch: int = 64, max_wait_ms: float = 5.0,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_rows: int = DEFAULT_MAX_ROWS,
               max_queue: int = DEFAULT_MAX_QUEUE, timeout_s: float = DEFAULT_TIMEOUT_S,
               max_concurrency: int = DEFAULT_MAX_CONCURRENCY, max_pixels: int = DEFAULT_MAX_PIXELS,
               token: str | None = None):
    """A FastAPI app serving ``run`` (a Run or its directory); the model is loaded here, so a bad run
    or backend fails now rather than at the first request.

    ``token``: when given, every endpoint but ``/health`` needs ``Authorization: Bearer <token>``.
    The limits are those of ``layerwise serve`` (docs/serving.md).

    >>> app = create_app("runs/digits-cnn-20261122-101500", backend="onnx")   # doctest: +SKIP
    >>> uvicorn.run(app, port=8000)                                          # doctest: +SKIP
    """
    fastapi = require("fastapi", "serve")
    from fastapi import File, HTTPException, UploadFile
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field

    check_settings(backend, max_batch, max_wait_ms, max_body_bytes, max_rows, max_queue, timeout_s,
                   max_concurrency, max_pixels)
    run = _as_run(run)
    schema = InputSchema(run)
    predictor = make_backend(run, backend)
    held = Held()
    batcher = MicroBatcher(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms)
    metrics = ServerMetrics(pending=lambda: held.pending, queued=lambda: batcher.queued)
    batcher.observe = metrics.observe_batch
    # inputs are converted in threads, never on the event loop, max_concurrency at a time in each pool:
    # uploads have a pool of their own, so cheap JSON rows never queue behind images being decoded
    converter = ThreadPoolExecutor(max_concurrency, thread_name_prefix="layerwise-convert")
    decoder = ThreadPoolExecutor(max_concurrency, thread_name_prefix="layerwise-decode", initializer=_yield_cpu)
    started = time.time()
    worker = secrets.token_hex(4)  # tells workers apart in /health without naming a process id
    classes = list(run.preprocessing.classes or [])
    class_names = list(run.spec.class_names or [])
    target_names = run.spec.target_names or [f"target{j}" for j in range(run.spec.num_targets or 1)]

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": schema.example()}]})
        inputs: list[Any] = Field(..., description=f"a batch of {schema.kind} inputs, at most {max_rows} rows; "
                                                    f"see GET /metadata for their form")

    class Prediction(BaseModel):
        label: str | int | float | bool | None = Field(None, description="the predicted class (classification)")
        probabilities: dict[str, float] | None = Field(None, description="class name -> probability")
        value: float | list[float] | None = Field(None, description="the predicted value(s) (regression)")

    class PredictResponse(BaseModel):
        predictions: list[Prediction]

    def invalid(loc: tuple, message: str) -> RequestValidationError:
        return RequestValidationError([{"type": "invalid_input", "loc": loc, "msg": message, "input": None}])

    def format_predictions(out: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        if "proba" in out:
            return [{"label": classes[int(i)] if classes else int(i),
                     "probabilities": {name: float(p) for name, p in zip(class_names, proba)}}
                    for i, proba in zip(out["label"], out["proba"])]
        values = np.asarray(out["value"], dtype=float).reshape(len(out["value"]), -1)
        return [{"value": float(v[0]) if len(target_names) == 1 else [float(x) for x in v]} for v in values]

    async def convert(pool: ThreadPoolExecutor, function, *args):
        """``function(*args)`` in one of ``pool``'s threads: the event loop keeps answering meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)

    def rows_to_tensor(rows: list[Any]):
        schema.check(rows, max_rows)
        return schema.to_tensor(rows)

    async def answer(x, field: str) -> dict[str, Any]:
        try:
            out = await batcher.submit(x)
        except BatcherClosed as exc:
            raise HTTPException(503, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a fault in the forward: this request fails, the server stays up
            raise HTTPException(500, f"prediction failed: {type(exc).__name__}: {exc}") from None
        for values in out.values():  # a NaN probability is no answer: say which row could not be computed
            values = np.asarray(values)
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                i = int(np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))[0])
                raise invalid(("body", field), f"{field}[{i}]: the model's output is not finite for this row: its "
                                               f"values lie too far outside what the model was trained on")
        return {"predictions": format_predictions(out)}

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        # the million objects of torch, pandas and the model, loaded by now, leave the garbage collector's
        # sight: a full collection scanning them all held the event loop for ~0.2 s, /health included
        gc.collect()
        gc.freeze()
        yield
        await batcher.close()  # graceful shutdown: queued requests are answered before the process exits
        gc.unfreeze()  # an app run inside a longer process (tests, a notebook) gives them back
        for pool in (converter, decoder):
            pool.shutdown(wait=False, cancel_futures=True)

    app = fastapi.FastAPI(title=f"layerwise: {run.config.name}", lifespan=lifespan,
                          description=f"Predictions from the layerwise run `{run.path.name}` "
                                      f"({run.config.model.family}, {schema.kind} inputs, {backend} backend).")
    # added innermost first: a request meets the metrics, the token, the body size, then admission
    app.add_middleware(Admission, max_queue=max_queue, timeout_s=timeout_s, held=held)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if token is not None:
        app.add_middleware(BearerAuth, token=token)
    app.add_middleware(CountRequests, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        # FastAPI's 422 body, without echoing a rejected batch back: our messages already name the field
        errors = [{k: v for k, v in err.items() if err.get("type") != "invalid_input" or k in ("type", "loc", "msg")}
                  for err in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    busy = {503: {"description": f"more than {max_queue} requests held, or not answered within {timeout_s:g} s; "
                                 f"retry after the Retry-After header's seconds"}}

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
              summary="Predict for a JSON batch of raw inputs",
              responses={413: {"description": f"body over {max_body_bytes} bytes"},
                         422: {"description": "inputs that do not fit the run; the message names the field"}, **busy})
    async def predict(request: PredictRequest):
        try:  # checked row by row and converted in a conversion thread: a large batch does not stall the loop
            x = await convert(converter, rows_to_tensor, request.inputs)
        except InputError as exc:
            raise invalid(("body", "inputs"), str(exc)) from None
        except DataError as exc:
            raise invalid(("body", "inputs"), f"inputs: {exc}") from None
        return await answer(x, "inputs")

    @app.post("/predict/image", response_model=PredictResponse, response_model_exclude_none=True,
              summary="Predict for uploaded image files (image runs)",
              responses={413: {"description": f"body over {max_body_bytes} bytes, or an image of more than "
                                              f"{max_pixels} pixels (width x height)"}, **busy})
    async def predict_image(files: Annotated[list[UploadFile], File(description="one or more image files")]):
        if not schema.request.takes_image_files:
            raise invalid(("body", "files"), f"files: this run takes {schema.kind} inputs; POST JSON to /predict")
        if len(files) > max_rows:
            raise invalid(("body", "files"), f"files: {len(files)} images, more than this server's limit of "
                                             f"{max_rows} per request (max_rows)")
        uploads = [_Upload(await upload.read(), f"files[{i}] ({upload.filename or 'unnamed'})")
                   for i, upload in enumerate(files)]
        cancelled = threading.Event()
        try:
            pixels = await convert(decoder, _decode_uploads, uploads, (schema.height, schema.width), schema.channels,
                                   max_pixels, cancelled)
        except _Refused as exc:
            if exc.status == 413:
                raise HTTPException(413, str(exc)) from None
            raise invalid(("body", "files", exc.index), str(exc)) from None
        finally:
            cancelled.set()  # a request cancelled by its timeout stops decoding at the next file
        try:
            x = schema.pixels_to_tensor(pixels)
        except DataError as exc:
            raise invalid(("body", "files"), f"files: {exc}") from None
        return await answer(x, "files")

    @app.get("/health", summary="Liveness, backend, uptime and batching counters (needs no token)")
    async def health():
        return {"status": "ok", "backend": backend, "run": run.path.name, "worker": worker,
                "uptime_s": round(time.time() - started, 3), "pending": held.pending, **batcher.stats()}

    @app.get("/metadata", summary="Input schema, classes and the model card")
    async def metadata():
        output: dict[str, Any] = {"task": run.config.task}
        if classes:
            output.update(classes=classes, class_names=class_names)
        else:
            output["targets"] = target_names
        return {"run": run.path.name, "backend": backend, "input": schema.describe(), "output": output,
                "model": model_card(run),
                "limits": {"max_rows": max_rows, "max_body_bytes": max_body_bytes, "max_batch": max_batch,
                           "max_wait_ms": max_wait_ms, "max_queue": max_queue, "timeout_s": timeout_s,
                           "max_concurrency": max_concurrency, "max_pixels": max_pixels}}

    @app.get("/metrics", summary="Prometheus metrics: requests, latencies, batch sizes, queue depth")
    async def prometheus_metrics():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    app.state.batcher = batcher
    app.state.run = run
    app.state.metrics = metrics
    return app


class _Upload(io.BytesIO):
    """An uploaded file for Pillow: a buffer whose str() names the upload in messages (``files[1] (a.png)``)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


def app_from_env():
    """The app for ``uvicorn --factory layerwise.tools.serve:app_from_env`` (what ``--workers N`` runs in each
    worker): the run directory from LAYERWISE_SERVE_RUN, the other settings from LAYERWISE_SERVE_*, the
    bearer token from the file LAYERWISE_SERVE_TOKEN_FILE names (none when unset)."""
    path = os.environ.get(ENV["run"])
    if not path:
        raise ConfigError(f"{ENV['run']} is not set; set it to the run directory to serve")
    settings = {name: kind(os.environ.get(ENV[name], default)) for name, (kind, default) in SETTINGS.items()}
    token_file = os.environ.get(ENV["token_file"])
    from ...runs.trust import trusting_runs

    with trusting_runs(os.environ.get(ENV["trust"]) == "1"):  # the parent was given --trust-run
        return create_app(Path(path), **settings, token=read_token(Path(token_file)) if token_file else None)
