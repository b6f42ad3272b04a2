"""Load test of `layerwise serve`: concurrent clients, valid and invalid requests mixed, per backend.

Starts the server as a subprocess on 127.0.0.1 for an image run (the MNIST CNN, the digits CNN, or a
digits CNN trained here in a few seconds), then runs CLIENTS threads, each with its own keep-alive
httpx client, sending requests back to back for SECONDS. About 10% of requests are invalid (a cropped
image, a pixel out of range, malformed JSON, an unknown field) and must get 422; every valid request
must get 200 with the labels ``Run.predict`` gives for the same images. Prints requests/s, p50/p99
latency of valid requests, failed valid requests (must be 0) and how much the micro-batcher merged.

    python benchmarks/serve_load.py --quick                          # 5 s, 8 clients: a smoke test
    python benchmarks/serve_load.py --run runs/mnist-cnn-... --backend torch onnx   # 32 clients, 30 s
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import layerwise

ROOT = Path(__file__).resolve().parents[1]
POOL = 256  # distinct valid images the clients draw from


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quick_run(runs_dir: str) -> Path:
    """A digits CNN trained in seconds (examples/digits.yaml, 3 epochs)."""
    run = layerwise.train(ROOT / "examples" / "digits.yaml", runs_dir=runs_dir, quiet=True,
                          overrides=["train.epochs=3"])
    return run.path


def image_pool(run) -> tuple[list, list]:
    """Valid request rows (H, W[, C] pixel lists) from the run's test split, and their expected labels."""
    if run.spec.kind != "image":
        sys.exit(f"serve_load.py drives image runs; {run.path} has {run.spec.kind} inputs")
    split = run.data.test if run.data.test is not None else run.data.val
    pixels = split.x[:POOL].numpy()  # uint8 (N, C, H, W)
    labels = run.predict(pixels)["label"].tolist()
    classes = run.preprocessing.classes
    rows = [p[0].tolist() if p.shape[0] == 1 else p.transpose(1, 2, 0).tolist() for p in pixels]
    return rows, [classes[i] for i in labels]


def invalid_body(kind: int, row: list) -> tuple[bytes, str]:
    """One of four invalid requests (each must get 422) and what it is."""
    if kind == 0:
        return json.dumps({"inputs": [row[:-1]]}).encode(), "cropped image"
    if kind == 1:
        bad = [list(r) for r in row]
        bad[0][0] = 999 if not isinstance(bad[0][0], list) else [999] * len(bad[0][0])
        return json.dumps({"inputs": [bad]}).encode(), "pixel out of range"
    if kind == 2:
        return b'{"inputs": [[1, 2', "malformed JSON"
    return json.dumps({"inputs": [row], "threshold": 0.5}).encode(), "unknown field"


class Client(threading.Thread):
    def __init__(self, url: str, rows: list, labels: list, stop_at: float, invalid: float, seed: int):
        super().__init__(daemon=True)
        self.url, self.rows, self.labels, self.stop_at, self.invalid = url, rows, labels, stop_at, invalid
        self.rng = np.random.default_rng(seed)
        self.latencies: list[float] = []
        self.valid_failed = 0
        self.invalid_sent = 0
        self.invalid_wrong = 0  # invalid requests not answered 422
        self.first_failure: str | None = None

    def run(self) -> None:
        import httpx

        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while time.perf_counter() < self.stop_at:
                i = int(self.rng.integers(len(self.rows)))
                if self.rng.random() < self.invalid:
                    body, _ = invalid_body(int(self.rng.integers(4)), self.rows[i])
                    self.invalid_sent += 1
                    try:
                        status = client.post("/predict", content=body, headers=headers).status_code
                    except httpx.HTTPError:
                        status = None
                    self.invalid_wrong += status != 422
                    continue
                start = time.perf_counter()
                try:
                    response = client.post("/predict", json={"inputs": [self.rows[i]]})
                    ok = response.status_code == 200 and response.json()["predictions"][0]["label"] == self.labels[i]
                    reason = f"status {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, reason = False, f"{type(exc).__name__}: {exc}"
                if ok:
                    self.latencies.append(time.perf_counter() - start)
                else:
                    self.valid_failed += 1
                    self.first_failure = self.first_failure or reason


def load(run_path: Path, backend: str, args, rows: list, labels: list) -> dict:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "layerwise", "serve", str(run_path), "--port", str(port), "--backend", backend,
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ))
    try:
        started = time.perf_counter()
        while True:
            if server.poll() is not None:
                sys.exit(f"the {backend} server exited: {server.stderr.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        startup = time.perf_counter() - started
        before = httpx.get(f"{url}/health").json()
        stop_at = time.perf_counter() + args.seconds
        clients = [Client(url, rows, labels, stop_at, args.invalid, seed) for seed in range(args.clients)]
        t0 = time.perf_counter()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        wall = time.perf_counter() - t0
        after = httpx.get(f"{url}/health").json()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            exit_code = server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            exit_code = "killed after 30 s"
    latencies = np.array([x for c in clients for x in c.latencies]) * 1000
    valid = len(latencies) + sum(c.valid_failed for c in clients)
    invalid = sum(c.invalid_sent for c in clients)
    batches = after["batches"] - before["batches"]
    queued = after["requests"] - before["requests"]
    return {"backend": backend, "startup_s": startup, "requests_per_s": (valid + invalid) / wall,
            "valid_per_s": valid / wall, "valid": valid, "invalid": invalid,
            "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
            "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
            "failed_valid": sum(c.valid_failed for c in clients),
            "invalid_not_422": sum(c.invalid_wrong for c in clients),
            "first_failure": next((c.first_failure for c in clients if c.first_failure), None),
            "rows_per_batch": (after["rows"] - before["rows"]) / batches if batches else 0.0,
            "batches": batches, "batched_requests": queued, "exit_code": exit_code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="an image run directory (default: train a digits CNN in a few seconds)")
    parser.add_argument("--backend", nargs="+", default=["torch", "onnx", "onnx-int8"], choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--invalid", type=float, default=0.1, help="share of invalid requests")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="5 s and 8 clients per backend")
    parser.add_argument("--runs-dir", default="/tmp/layerwise-bench-serve")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.clients = 5.0, 8
    run_path = Path(args.run) if args.run else quick_run(args.runs_dir)
    run = layerwise.load_run(run_path)
    rows, labels = image_pool(run)
    print(f"{run_path} ({run.config.model.family}, {len(rows)} distinct images); {args.clients} clients, "
          f"{args.seconds:g} s per backend, {args.invalid:.0%} invalid requests, max batch {args.max_batch}, "
          f"max wait {args.max_wait_ms:g} ms; {os.cpu_count()} CPU cores shared by clients and server")
    results = [load(run_path, backend, args, rows, labels) for backend in args.backend]
    header = ("backend", "req/s", "valid/s", "p50 ms", "p99 ms", "valid", "failed valid", "invalid", "invalid not 422",
              "rows/forward", "exit")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for r in results:
        print(f"| {r['backend']} | {r['requests_per_s']:.0f} | {r['valid_per_s']:.0f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['valid']} | {r['failed_valid']} | {r['invalid']} | {r['invalid_not_422']} | "
              f"{r['rows_per_batch']:.1f} | {r['exit_code']} |")
    for r in results:
        if r["first_failure"]:
            print(f"{r['backend']}: first failed valid request: {r['first_failure']}")
    if any(r["failed_valid"] or r["invalid_not_422"] or r["exit_code"] != 0 for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
