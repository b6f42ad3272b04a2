"""``layerwise serve``: a trained run behind HTTP, with FastAPI and uvicorn.

``POST /predict`` takes a JSON batch of raw inputs (table rows, pixel arrays, texts), validated
against the run before anything runs (422 naming the field), and answers labels and probabilities
(or values). ``POST /predict/image`` takes uploaded image files. ``GET /health`` and ``GET /metadata``
describe the server and the model; FastAPI serves the OpenAPI docs at ``/docs``. Concurrent requests
are merged into one forward by a dynamic micro-batcher (max batch, max wait), the same idea as the
dynamic batching of inference servers such as NVIDIA Triton. ``GET /metrics`` exposes Prometheus
metrics. In front of it all: an optional bearer token (required when listening beyond loopback),
TLS, a body-size limit, a pixel budget for uploaded images, a bound on the requests held and a
timeout for each. See docs/serving.md.

>>> from layerwise.tools.serve import serve
>>> serve("runs/digits-cnn-20261122-101500", port=8000, backend="onnx")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError, require
from ...runs.tools import ToolOptions, option, register_tool
from .app import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_ROWS,
    DEFAULT_TIMEOUT_S,
    ENV,
    app_from_env,
    check_settings,
    create_app,
)
from .backends import BACKENDS, ensure_onnx
from .batching import MicroBatcher
from .guards import is_loopback, new_token_file, read_token

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
    token_file: Path | None = option(None, "file holding the bearer token every request but GET /health must send "
                                           "(Authorization: Bearer ...); default: none on loopback, a generated "
                                           "one on any other address")
    auth: bool = option(True, "a bearer token beyond loopback; --no-auth serves without one (behind a proxy "
                              "that authenticates)", flag="--no-auth")
    ssl_keyfile: Path | None = option(None, "TLS private key (PEM); with --ssl-certfile the server speaks HTTPS")
    ssl_certfile: Path | None = option(None, "TLS certificate chain (PEM), with --ssl-keyfile")
    max_queue: int = option(DEFAULT_MAX_QUEUE, "prediction requests held at once; more get 503 with Retry-After")
    timeout_s: float = option(DEFAULT_TIMEOUT_S, "a prediction request not answered within it gets 503")
    max_concurrency: int = option(DEFAULT_MAX_CONCURRENCY, "uploads decoded at once (and, apart, JSON batches "
                                                           "converted), in threads beside the event loop")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "most pixels (width x height) of an uploaded image; "
                                                 "larger get 413 before decoding")


@register_tool("serve", ServeOptions)
def serve(run: Any, options: ServeOptions) -> None:
    """Serve a trained RUN over HTTP (FastAPI + uvicorn): POST /predict, GET /health, /metadata, /metrics, /docs.

    Serves ``run`` (a Run or its directory) until SIGTERM or SIGINT, then shuts down gracefully.

    The run, the backend and the settings are checked (and the ONNX file exported when missing)
    before uvicorn starts, so a mistake is a one-line error rather than a dead server. With
    ``workers > 1`` uvicorn starts that many processes, each building the app from the environment
    (:func:`app_from_env`); each has its own batcher.

    Listening on anything but loopback requires a bearer token: ``token_file``'s, else a generated
    one written to a new file readable only by its owner (its path is printed, never the token), as
    TorchServe does since 0.11; ``auth=False`` (``--no-auth``) serves without one, with a warning.
    """
    from ...runs.run import Run, load_run

    host, port, backend, workers, log_level = (options.host, options.port, options.backend, options.workers,
                                               options.log_level)
    settings = {"backend": backend, "max_batch": options.max_batch, "max_wait_ms": options.max_wait_ms,
                "max_body_bytes": int(options.max_body_mb * 2**20), "max_rows": options.max_rows,
                "max_queue": options.max_queue, "timeout_s": options.timeout_s,
                "max_concurrency": options.max_concurrency, "max_pixels": options.max_pixels}
    uvicorn = require("uvicorn", "serve")
    check_settings(**settings)
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {workers}")
    tls = _tls_files(options.ssl_keyfile, options.ssl_certfile)
    token_file, token = _given_token(options.token_file, options.auth)
    run = run if isinstance(run, Run) else load_run(run)
    generated = token is None and options.auth and not is_loopback(host)
    if generated:
        token_file, token = new_token_file()
    try:
        if workers == 1:
            target: Any = create_app(run, **settings, token=token)
        else:
            # validate here, once: the workers only import the app (a failure there would loop in each)
            from .schema import InputSchema

            InputSchema(run)
            run.model  # noqa: B018 - loads the weights: a broken run fails now
            if backend.startswith("onnx"):
                ensure_onnx(run, int8=backend == "onnx-int8")  # exported once here, not raced by N workers
            os.environ.update({ENV["run"]: str(Path(run.path).resolve()),
                               **{ENV[k]: str(v) for k, v in settings.items()}})
            if getattr(run, "trust_code", False):  # --trust-run: each worker loads the run as this process did
                os.environ[ENV["trust"]] = "1"
            if token_file is not None:  # the workers read the token from its file, not from their environment
                os.environ[ENV["token_file"]] = str(token_file)
            else:
                os.environ.pop(ENV["token_file"], None)
            target = "layerwise.tools.serve:app_from_env"
        url = f"{'https' if tls else 'http'}://{host}:{port}"
        print(f"serving {run.path} ({backend} backend, {workers} worker{'s' if workers > 1 else ''}) at {url}  "
              f"(API docs: {url}/docs)", flush=True)
        if generated:
            print(f"bearer token required: generated into {token_file} (readable by you only); clients send "
                  f"'Authorization: Bearer <token>'; --token-file FILE to choose it", flush=True)
        _warn(host, token, tls)
        with _exit_zero_after_signal():
            uvicorn.run(target, host=host, port=port, workers=workers, factory=workers > 1, log_level=log_level,
                        timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S,
                        **({"ssl_keyfile": str(tls[0]), "ssl_certfile": str(tls[1])} if tls else {}))
    finally:
        if generated:  # a new one is generated at the next start
            token_file.unlink(missing_ok=True)


def _tls_files(keyfile: Path | None, certfile: Path | None) -> tuple[Path, Path] | None:
    """(key, certificate) for HTTPS, both or neither; one-line ConfigErrors for a missing half or file."""
    if keyfile is None and certfile is None:
        return None
    if keyfile is None or certfile is None:
        given, missing = ("--ssl-keyfile", "--ssl-certfile") if certfile is None else ("--ssl-certfile",
                                                                                       "--ssl-keyfile")
        raise ConfigError(f"{given} needs {missing} too: TLS takes a private key and its certificate (PEM files)")
    for flag, path in (("--ssl-keyfile", keyfile), ("--ssl-certfile", certfile)):
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"{flag}: file not found: {path}")
    return Path(keyfile).expanduser(), Path(certfile).expanduser()


def _given_token(token_file: Path | None, auth: bool) -> tuple[Path | None, str | None]:
    """(the token's file, the token) when ``--token-file`` gives one; one-line ConfigErrors for a
    missing, short or contradicted file."""
    if token_file is None:
        return None, None
    if not auth:
        raise ConfigError("--no-auth and --token-file contradict each other: give one of them")
    return Path(token_file).expanduser(), read_token(token_file)


def _warn(host: str, token: str | None, tls: tuple[Path, Path] | None) -> None:
    """One line on stderr for each way the server is less protected than it could be."""
    if token is None and is_loopback(host):
        print("warning: no authentication (loopback only); --token-file FILE requires a bearer token",
              file=sys.stderr, flush=True)
    elif token is None:
        print(f"warning: no authentication on {host} (--no-auth): anyone who can reach the port can use the "
              f"model", file=sys.stderr, flush=True)
    if not tls and not is_loopback(host):
        print(f"warning: plain HTTP on {host}: requests{' and the bearer token' if token else ''} cross the "
              f"network unencrypted; --ssl-keyfile/--ssl-certfile, or a TLS proxy in front",
              file=sys.stderr, flush=True)


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
