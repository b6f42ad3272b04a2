"""The FastAPI application: routes, request models, the body-size limit and the batcher's lifespan.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at runtime,
and the request model is a class built per run inside :func:`create_app`.
"""

import datetime as _dt
import io
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ...core.errors import ConfigError, DataError, require
from .backends import BACKENDS, make_backend
from .batching import BatcherClosed, MicroBatcher
from .schema import InputError, InputSchema

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_ROWS", "ENV", "app_from_env", "create_app"]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_ROWS = 256
# settings for app_from_env(): the factory uvicorn imports in each worker when --workers > 1
ENV = {"run": "LAYERWISE_SERVE_RUN", "backend": "LAYERWISE_SERVE_BACKEND", "max_batch": "LAYERWISE_SERVE_MAX_BATCH",
       "max_wait_ms": "LAYERWISE_SERVE_MAX_WAIT_MS", "max_body_bytes": "LAYERWISE_SERVE_MAX_BODY_BYTES",
       "max_rows": "LAYERWISE_SERVE_MAX_ROWS"}


def check_settings(backend: str, max_batch: int, max_wait_ms: float, max_body_bytes: int, max_rows: int) -> None:
    """One-line ConfigErrors for bad server settings, before anything is loaded."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    for key, value, low in (("--max-batch", max_batch, 1), ("--max-wait-ms", max_wait_ms, 0),
                            ("--max-body-mb", max_body_bytes, 1), ("--max-rows", max_rows, 1)):
        if value < low:
            raise ConfigError(f"{key}: must be at least {low}, got {value}")


class BodyLimit:
    """Reject a request body over ``max_bytes`` with 413 before it is parsed: at once when its
    Content-Length says so, else while it streams in (chunked bodies), counting the bytes read."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse

        message = (f"request body over this server's limit of {self.max_bytes} bytes (max_body_bytes); "
                   f"send fewer rows per request")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            # the body is never read: the connection is closed after the answer
            return await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException met while reading the body: the answer is a 413
                    raise HTTPException(413, message)
            return msg

        return await self.app(scope, counted, send)


def _as_run(run):
    from ...runs.run import Run, load_run

    return run if isinstance(run, Run) else load_run(run)


def _created(run) -> str | None:
    weights = run.path / "model.safetensors"
    if not weights.is_file():
        return None
    stamp = _dt.datetime.fromtimestamp(weights.stat().st_mtime, tz=_dt.timezone.utc)
    return stamp.isoformat(timespec="seconds")


def model_card(run) -> dict[str, Any]:
    """Family, configuration, size and training metrics of the run (``GET /metadata``'s ``model``)."""
    metrics = run.metrics
    training = metrics.get("training", {})
    parameters = training.get("parameters")
    if parameters is None:
        parameters = sum(p.numel() for p in run.model.parameters())
    return {"name": run.config.name, "family": run.config.model.family, "task": run.config.task,
            "config": run.config.model.model_dump(mode="json"), "parameters": int(parameters),
            "metrics": metrics.get("metrics", {}), "metrics_split": metrics.get("split"),
            "training": {k: training[k] for k in ("duration_s", "epochs_run", "device", "layerwise_version")
                         if k in training},
            "created": _created(run)}


def create_app(run, backend: str = "torch", max_batch: int = 64, max_wait_ms: float = 5.0,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_rows: int = DEFAULT_MAX_ROWS):
    """A FastAPI app serving ``run`` (a Run or its directory); the model is loaded here, so a bad run
    or backend fails now rather than at the first request.

    >>> app = create_app("runs/digits-cnn-20261122-101500", backend="onnx")   # doctest: +SKIP
    >>> uvicorn.run(app, port=8000)                                          # doctest: +SKIP
    """
    fastapi = require("fastapi", "serve")
    from fastapi import File, HTTPException, UploadFile
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, field_validator
    from pydantic_core import PydanticCustomError

    check_settings(backend, max_batch, max_wait_ms, max_body_bytes, max_rows)
    run = _as_run(run)
    schema = InputSchema(run)
    predictor = make_backend(run, backend)
    batcher = MicroBatcher(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms)
    started = time.time()
    classes = list(run.preprocessing.classes or [])
    class_names = list(run.spec.class_names or [])
    target_names = run.spec.target_names or [f"target{j}" for j in range(run.spec.num_targets or 1)]

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": schema.example()}]})
        inputs: list[Any] = Field(..., description=f"a batch of {schema.kind} inputs, at most {max_rows} rows; "
                                                    f"see GET /metadata for their form")

        @field_validator("inputs")
        @classmethod
        def _fit_the_run(cls, rows: list[Any]) -> list[Any]:
            try:
                schema.check(rows, max_rows)
            except InputError as exc:
                # the message already names the row and field; "{detail}" keeps braces in it literal
                raise PydanticCustomError("invalid_input", "{detail}", {"detail": str(exc)}) from None
            return rows

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

    async def answer(x) -> dict[str, Any]:
        try:
            out = await batcher.submit(x)
        except BatcherClosed as exc:
            raise HTTPException(503, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a fault in the forward: this request fails, the server stays up
            raise HTTPException(500, f"prediction failed: {type(exc).__name__}: {exc}") from None
        return {"predictions": format_predictions(out)}

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.close()  # graceful shutdown: queued requests are answered before the process exits

    app = fastapi.FastAPI(title=f"layerwise: {run.config.name}", lifespan=lifespan,
                          description=f"Predictions from the layerwise run `{run.path.name}` "
                                      f"({run.config.model.family}, {schema.kind} inputs, {backend} backend).")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        # FastAPI's 422 body, without echoing a rejected batch back: our messages already name the field
        errors = [{k: v for k, v in err.items() if err.get("type") != "invalid_input" or k in ("type", "loc", "msg")}
                  for err in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
              summary="Predict for a JSON batch of raw inputs",
              responses={413: {"description": f"body over {max_body_bytes} bytes"},
                         422: {"description": "inputs that do not fit the run; the message names the field"}})
    async def predict(request: PredictRequest):
        try:
            x = schema.to_tensor(request.inputs)
        except DataError as exc:
            raise invalid(("body", "inputs"), f"inputs: {exc}") from None
        return await answer(x)

    @app.post("/predict/image", response_model=PredictResponse, response_model_exclude_none=True,
              summary="Predict for uploaded image files (image runs)")
    async def predict_image(files: Annotated[list[UploadFile], File(description="one or more image files")]):
        if not schema.request.takes_image_files:
            raise invalid(("body", "files"), f"files: this run takes {schema.kind} inputs; POST JSON to /predict")
        if len(files) > max_rows:
            raise invalid(("body", "files"), f"files: {len(files)} images, more than this server's limit of "
                                             f"{max_rows} per request (max_rows)")
        from ...data.images import load_images

        pixels = []
        for i, upload in enumerate(files):
            data = _Upload(await upload.read(), upload.filename or f"files[{i}]")
            try:  # decoded, converted and resized exactly as Run.predict reads an image file
                pixels.append(load_images([data], (schema.height, schema.width), schema.channels))
            except DataError:
                raise invalid(("body", "files", i), f"files[{i}] ({data.name}): not a readable image") from None
        try:
            x = schema.pixels_to_tensor(np.concatenate(pixels))
        except DataError as exc:
            raise invalid(("body", "files"), f"files: {exc}") from None
        return await answer(x)

    @app.get("/health", summary="Liveness, backend, uptime and batching counters")
    async def health():
        return {"status": "ok", "backend": backend, "run": str(run.path), "pid": os.getpid(),
                "uptime_s": round(time.time() - started, 3), **batcher.stats()}

    @app.get("/metadata", summary="Input schema, classes and the model card")
    async def metadata():
        output: dict[str, Any] = {"task": run.config.task}
        if classes:
            output.update(classes=classes, class_names=class_names)
        else:
            output["targets"] = target_names
        return {"run": str(run.path), "backend": backend, "input": schema.describe(), "output": output,
                "model": model_card(run),
                "limits": {"max_rows": max_rows, "max_body_bytes": max_body_bytes, "max_batch": max_batch,
                           "max_wait_ms": max_wait_ms}}

    app.state.batcher = batcher
    app.state.run = run
    return app


class _Upload(io.BytesIO):
    """An uploaded file for Pillow: a buffer whose str() names the upload in messages."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


def app_from_env():
    """The app for ``uvicorn --factory layerwise.tools.serve:app_from_env`` (what ``--workers N`` runs in each
    worker): the run directory from LAYERWISE_SERVE_RUN, the other settings from LAYERWISE_SERVE_*."""
    path = os.environ.get(ENV["run"])
    if not path:
        raise ConfigError(f"{ENV['run']} is not set; set it to the run directory to serve")
    return create_app(Path(path), backend=os.environ.get(ENV["backend"], "torch"),
                      max_batch=int(os.environ.get(ENV["max_batch"], "64")),
                      max_wait_ms=float(os.environ.get(ENV["max_wait_ms"], "5")),
                      max_body_bytes=int(os.environ.get(ENV["max_body_bytes"], DEFAULT_MAX_BODY_BYTES)),
                      max_rows=int(os.environ.get(ENV["max_rows"], DEFAULT_MAX_ROWS)))
