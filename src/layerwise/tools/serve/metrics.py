"""``GET /metrics``: the server's counters in the Prometheus text format (``prometheus_client``).

Each app has a registry of its own, so several apps in one process (tests, an app mounted beside
others) never mix their counts; with ``--workers N`` each worker answers for itself, like ``/health``.

| metric | type | labels |
| --- | --- | --- |
| ``layerwise_requests_total`` | counter: requests answered | endpoint, method, status |
| ``layerwise_request_duration_seconds`` | histogram: from the first byte in to the last byte out | endpoint |
| ``layerwise_batch_rows`` | histogram: rows per forward pass (the micro-batcher at work) | |
| ``layerwise_forward_duration_seconds`` | histogram: one forward pass | |
| ``layerwise_requests_in_progress`` | gauge: prediction requests held (``max_queue`` bounds it) | |
| ``layerwise_batcher_queue_depth`` | gauge: requests converted and waiting for a forward | |
| ``process_*`` | the process's memory, CPU time and open files | |
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ...core.errors import require

__all__ = ["ENDPOINTS", "CountRequests", "ServerMetrics"]

# the label of every path the app serves; anything else is "other" (a scanner's guesses must not
# create a time series each)
ENDPOINTS = ("/predict", "/predict/image", "/health", "/metadata", "/metrics", "/docs", "/openapi.json")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """The app's metrics. ``pending`` and ``queued`` are read at each scrape (gauges by function)."""

    def __init__(self, pending: Callable[[], int], queued: Callable[[], int]):
        prometheus = require("prometheus_client", "serve")
        self._prometheus = prometheus
        self.registry = registry = prometheus.CollectorRegistry()
        self.requests = prometheus.Counter("layerwise_requests", "HTTP requests answered",
                                           ["endpoint", "method", "status"], registry=registry)
        self.latency = prometheus.Histogram("layerwise_request_duration_seconds", "time to answer a request",
                                            ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_rows = prometheus.Histogram("layerwise_batch_rows", "rows per forward pass",
                                               buckets=ROW_BUCKETS, registry=registry)
        self.forward = prometheus.Histogram("layerwise_forward_duration_seconds", "time of one forward pass",
                                            buckets=LATENCY_BUCKETS, registry=registry)
        prometheus.Gauge("layerwise_requests_in_progress", "prediction requests held: arriving, converting, "
                         "queued or in a forward", registry=registry).set_function(pending)
        prometheus.Gauge("layerwise_batcher_queue_depth", "requests waiting for a forward pass",
                         registry=registry).set_function(queued)
        prometheus.ProcessCollector(registry=registry)

    def observe_batch(self, rows: int, seconds: float) -> None:
        """The micro-batcher's hook: one forward of ``rows`` rows took ``seconds``."""
        self.batch_rows.observe(rows)
        self.forward.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type."""
        return self._prometheus.generate_latest(self.registry), self._prometheus.CONTENT_TYPE_LATEST


class CountRequests:
    """ASGI middleware, outermost: counts and times every answer, the guards' 401/413/503 included."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = 500  # if the app raises before answering
        started = time.perf_counter()

        async def watched(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
