"""``layerwise serve``: a trained run behind HTTP, with FastAPI and uvicorn.

``POST /predict`` takes a JSON batch of raw inputs (table rows, pixel arrays, texts), validated
against the run before anything runs (422 naming the field), and answers labels and probabilities
(or values). ``POST /predict/image`` takes uploaded image files. ``GET /health`` and ``GET /metadata``
describe the server and the model; FastAPI serves the OpenAPI docs at ``/docs``. Concurrent requests
are merged into one forward by a dynamic micro-batcher (max batch, max wait), the same idea as the
dynamic batching of inference servers such as NVIDIA Triton. See docs/serving.md.

>>> from layerwise.tools.serve import serve
>>> serve("runs/digits-cnn-20261122-101500", port=8000, backend="onnx")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError, require
from ...runs.tools import ToolOptions, option, register_tool
from .app import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ROWS,
    ENV,
    app_from_env,
    check_settings,
    create_app,
)
from .backends import BACKENDS, ensure_onnx
from .batching import MicroBatcher

__all__ = ["BACKENDS", "ENV", "MicroBatcher", "app_from_env", "create_app", "serve"]

GRACEFUL_TIMEOUT_S = 30  # longest wait for in-flight requests at shutdown


class ServeOptions(ToolOptions):
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, "port to listen on (0: any free port)", ge=0, le=65535)
    backend: str = option("torch", "torch, onnx or onnx-int8 (RUN/export/model[.int8].onnx, made if missing)")
    workers: int = option(1, "uvicorn worker processes")
    max_batch: int = option(64, "rows merged into one forward at most")
    max_wait_ms: float = option(5.0, "longest wait for a batch to fill")
    max_body_mb: float = option(DEFAULT_MAX_BODY_BYTES / 2**20, "larger request bodies get 413")
    max_rows: int = option(DEFAULT_MAX_ROWS, "more rows in one request get 422")
    log_level: str = option("info", "uvicorn's (warning: no access log)")


@register_tool("serve", ServeOptions)
def serve(run: Any, options: ServeOptions) -> None:
    """Serve a trained RUN over HTTP (FastAPI + uvicorn): POST /predict, GET /health, /metadata, /docs.

    Serves ``run`` (a Run or its directory) until SIGTERM or SIGINT, then shuts down gracefully.

    The run, the backend and the settings are checked (and the ONNX file exported when missing)
    before uvicorn starts, so a mistake is a one-line error rather than a dead server. With
    ``workers > 1`` uvicorn starts that many processes, each building the app from the environment
    (:func:`app_from_env`); each has its own batcher.
    """
    from ...runs.run import Run, load_run

    host, port, backend, workers, max_batch, max_wait_ms, max_rows, log_level = (
        options.host, options.port, options.backend, options.workers, options.max_batch, options.max_wait_ms,
        options.max_rows, options.log_level)
    max_body_bytes = int(options.max_body_mb * 2**20)
    uvicorn = require("uvicorn", "serve")
    check_settings(backend, max_batch, max_wait_ms, max_body_bytes, max_rows)
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {workers}")
    run = run if isinstance(run, Run) else load_run(run)
    settings = {"backend": backend, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                "max_body_bytes": max_body_bytes, "max_rows": max_rows}
    if workers == 1:
        target: Any = create_app(run, **settings)
    else:
        # validate here, once: the workers only import the app (a failure there would loop in each)
        from .schema import InputSchema

        InputSchema(run)
        run.model  # noqa: B018 - loads the weights: a broken run fails now
        if backend.startswith("onnx"):
            ensure_onnx(run, int8=backend == "onnx-int8")  # exported once here, not raced by N workers
        os.environ.update({ENV["run"]: str(Path(run.path).resolve()),
                           **{ENV[k]: str(v) for k, v in settings.items()}})
        target = "layerwise.tools.serve:app_from_env"
    url = f"http://{host}:{port}"
    print(f"serving {run.path} ({backend} backend, {workers} worker{'s' if workers > 1 else ''}) at {url}  "
          f"(API docs: {url}/docs)", flush=True)
    with _exit_zero_after_signal():
        uvicorn.run(target, host=host, port=port, workers=workers, factory=workers > 1, log_level=log_level,
                    timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S)


@contextlib.contextmanager
def _exit_zero_after_signal():
    """uvicorn (>= 0.29) re-raises the SIGTERM/SIGINT it handled once shutdown is complete, with the
    handlers that were installed before it started; no-op handlers there turn a finished graceful
    shutdown into a normal return (exit code 0) instead of death by signal or a KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
