"""What stands between the network and the model: ASGI middlewares around the FastAPI app.

From the outside in (``create_app`` stacks them so): the bearer token (401), the body size (413),
then admission of prediction requests: at most ``max_queue`` held at once (503 with Retry-After,
the body left unread) and each answered within ``timeout_s`` (503 with Retry-After). They are plain
ASGI classes rather than FastAPI dependencies so that a refused request costs no body read, no
parsing and no thread. ``GET /health`` is never behind the token: a liveness probe needs no secret,
and it tells nothing a secret protects.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
import ipaddress
import os
import secrets
import tempfile
from pathlib import Path

from ...core.errors import ConfigError

__all__ = ["PUBLIC_PATHS", "Admission", "BearerAuth", "BodyLimit", "Held", "is_loopback", "new_token_file",
           "read_token"]

PUBLIC_PATHS = ("/health",)  # answered without the token
PREDICT_PREFIX = "/predict"  # the paths that reach the model: admitted, timed
RETRY_AFTER_S = 1  # what a refused client is told to wait: a batch takes milliseconds, a queue drains in seconds


async def _json(scope, receive, send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    from starlette.responses import JSONResponse

    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


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

        message = (f"request body over this server's limit of {self.max_bytes} bytes (max_body_bytes); "
                   f"send fewer rows per request")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            # the body is never read: the connection is closed after the answer
            return await _json(scope, receive, send, 413, message)
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


class BearerAuth:
    """Every path but ``/health`` needs ``Authorization: Bearer <token>``; otherwise 401.

    The comparison takes the same time whatever the guess (``hmac.compare_digest``)."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return await self.app(scope, receive, send)
        detail = ("a bearer token is required: send 'Authorization: Bearer TOKEN' with the token the server was "
                  "started with (--token-file)" if not header else "wrong bearer token")
        return await _json(scope, receive, send, 401, detail, {"WWW-Authenticate": "Bearer"})


@dataclass
class Held:
    """Prediction requests held now: counted by :class:`Admission`, read by ``/health`` and ``/metrics``."""

    pending: int = 0


class Admission:
    """Prediction requests (``/predict...``): at most ``max_queue`` held at once, whatever stage they are at
    (body arriving, waiting for a conversion thread, queued for a forward, in one); one more is answered
    503 with ``Retry-After`` without its body being read. Each held request is answered within
    ``timeout_s`` or gets 503: its work is cancelled (a slow upload, a queue that does not drain)."""

    def __init__(self, app, max_queue: int, timeout_s: float, held: Held):
        self.app = app
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.held = held

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(PREDICT_PREFIX):
            return await self.app(scope, receive, send)
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if self.held.pending >= self.max_queue:
            return await _json(scope, receive, send, 503,
                               f"server busy: {self.held.pending} prediction requests held, this server's limit "
                               f"(max_queue); retry after {RETRY_AFTER_S} s", retry)
        self.held.pending += 1
        started = False

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, watched), self.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            if started:  # the answer was on its way: nothing else can be said on this connection
                raise
            await _json(scope, receive, send, 503,
                        f"not answered within this server's limit of {self.timeout_s:g} s (timeout_s); the server "
                        f"is overloaded or the request too large: retry later, or send fewer rows", retry)
        finally:
            self.held.pending -= 1


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (its first line, stripped); one-line ConfigErrors otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--token-file: file not found: {path}; write the token clients must send into it")
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < 16:
        held = "no token" if not token else "a token of fewer than 16 characters"
        raise ConfigError(f"--token-file: {path} holds {held}; write a long random one into it "
                          f"(python -c 'import secrets; print(secrets.token_urlsafe(32))' > {path})")
    return token


def new_token_file() -> tuple[Path, str]:
    """A fresh random token in a new file readable by its owner only (mode 600): (path, token)."""
    token = secrets.token_urlsafe(32)
    fd, name = tempfile.mkstemp(prefix="layerwise-serve-token-")  # created with mode 600
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return Path(name), token
