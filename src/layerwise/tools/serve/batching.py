"""Dynamic micro-batching: concurrent requests share one forward pass.

Every request is validated and converted to the run's stored input form before it is queued, so a
bad row never enters a batch. A single worker task takes the first queued request, then keeps taking
requests until the batch holds ``max_batch`` rows or ``max_wait_ms`` has passed since that first
request, and runs ONE forward for all of them in a dedicated thread (so the event loop keeps
accepting and parsing requests meanwhile). Each request's future is resolved with its own slice.

A request is never split: one with more rows than ``max_batch`` runs as a batch of its own, and a
request that would overflow the batch being filled starts the next one.

If the batched forward raises, the batch is run again one request at a time, so only the requests
that also fail on their own get the error (the server answers 500 for them); the others are answered
normally and the worker carries on with the next batch. Under load, requests arriving while a forward
runs wait in the queue and form the next batch without any extra wait: batching grows with load.

A request whose caller has gone (its future cancelled: the server's timeout, a client that hung up)
is dropped when the worker reaches it, so it costs no forward. The queue itself is not bounded here:
the server bounds the requests it holds (``max_queue``) before they reach it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["BatcherClosed", "MicroBatcher"]

Predict = Callable[[torch.Tensor], dict[str, np.ndarray]]  # (B, ...) stored inputs -> arrays of B rows


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new requests."""


@dataclass
class _Job:
    x: torch.Tensor  # (n, ...) rows of one request, in the run's stored input form
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Queue requests and answer them with one forward per batch.

    >>> batcher = MicroBatcher(predict, max_batch=64, max_wait_ms=5)   # doctest: +SKIP
    >>> await batcher.start(); out = await batcher.submit(x)            # doctest: +SKIP
    """

    def __init__(self, predict: Predict, max_batch: int = 64, max_wait_ms: float = 5.0,
                 observe: Callable[[int, float], None] | None = None):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.predict = predict
        self.observe = observe  # called with (rows, seconds) after each batched forward: the server's metrics
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.requests = 0  # submitted
        self.batches = 0  # forwards run (the fallback's one-by-one forwards not counted)
        self.rows = 0
        self.failed = 0  # requests answered with an error
        self.dropped = 0  # requests whose caller had gone before their forward
        self.largest_batch = 0  # rows
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        # one thread: forwards run one after another, in the order the batches were formed
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="layerwise-forward")

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._work(), name="layerwise-batcher")

    async def submit(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Queue one request's rows and wait for its predictions (arrays of ``len(x)`` rows)."""
        if self._closing or self._queue is None:
            raise BatcherClosed("the server is shutting down")
        future = asyncio.get_running_loop().create_future()
        self.requests += 1
        self._queue.put_nowait(_Job(x, future))
        return await future

    async def close(self) -> None:
        """Stop taking requests, answer every queued one, then stop the worker (graceful shutdown)."""
        if self._queue is None or self._closing:
            return
        self._closing = True
        self._queue.put_nowait(None)  # after every queued job: FIFO order drains them first
        await self._task
        self._executor.shutdown(wait=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Job | None = None  # a job that did not fit in the previous batch
        stop = False
        while not stop:
            job = carry if carry is not None else await self._queue.get()
            carry = None
            if job is None:
                break
            if job.future.done():  # cancelled while queued: nobody waits for it
                self.dropped += 1
                continue
            jobs, rows = [job], len(job.x)
            deadline = loop.time() + self.max_wait
            while rows < self.max_batch:
                try:  # already queued jobs join at once; otherwise wait until the deadline
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), remaining)
                    except (asyncio.TimeoutError, TimeoutError):
                        break
                if nxt is None:
                    stop = True
                    break
                if nxt.future.done():
                    self.dropped += 1
                    continue
                if rows + len(nxt.x) > self.max_batch:
                    carry = nxt
                    break
                jobs.append(nxt)
                rows += len(nxt.x)
            waiting = [j for j in jobs if not j.future.done()]  # callers may have gone while the batch filled
            self.dropped += len(jobs) - len(waiting)
            if waiting:
                await self._run(waiting, sum(len(j.x) for j in waiting))

    async def _run(self, jobs: list[_Job], rows: int) -> None:
        loop = asyncio.get_running_loop()
        self.batches += 1
        self.rows += rows
        self.largest_batch = max(self.largest_batch, rows)
        try:
            x = jobs[0].x if len(jobs) == 1 else torch.cat([j.x for j in jobs])
            started = time.perf_counter()
            out = await loop.run_in_executor(self._executor, self.predict, x)
            if self.observe is not None:
                self.observe(rows, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - any failure is reported to the requests, never kills the worker
            if len(jobs) == 1:
                self._fail(jobs[0], exc)
                return
            for job in jobs:  # isolate: only the requests that fail on their own get the error
                try:
                    self._resolve(job, await loop.run_in_executor(self._executor, self.predict, job.x))
                except Exception as single:  # noqa: BLE001
                    self._fail(job, single)
            return
        start = 0
        for job in jobs:
            stop = start + len(job.x)
            self._resolve(job, {k: v[start:stop] for k, v in out.items()})
            start = stop

    @staticmethod
    def _resolve(job: _Job, value: dict[str, np.ndarray]) -> None:
        if not job.future.done():  # the client may have gone away (its request was cancelled)
            job.future.set_result(value)

    def _fail(self, job: _Job, exc: Exception) -> None:
        self.failed += 1
        if not job.future.done():
            job.future.set_exception(exc)

    def stats(self) -> dict[str, float | int]:
        """Counters for /health: under concurrency ``batches`` < ``requests`` shows merging."""
        return {"requests": self.requests, "batches": self.batches, "rows": self.rows, "failed": self.failed,
                "dropped": self.dropped, "largest_batch": self.largest_batch, "queued": self.queued,
                "mean_batch_rows": round(self.rows / self.batches, 2) if self.batches else 0.0}
