"""Load test of `layerwise serve`: concurrent clients, valid and invalid requests mixed, per backend.

Starts the server as a subprocess on 127.0.0.1 for an image run (the MNIST CNN, the digits CNN, or a
digits CNN trained here in a few seconds), then runs CLIENTS threads, each with its own keep-alive
httpx client, sending requests back to back for SECONDS. About 10% of requests are invalid (a cropped
image, a pixel out of range, malformed JSON, an unknown field) and must get 422; every valid request
must get 200 with the labels ``Run.predict`` gives for the same images. Prints requests/s, p50/p99
latency of valid requests, failed valid requests (must be 0) and how much the micro-batcher merged.

``--hostile``: BOMBERS of the clients (4) upload decompression bombs instead, round after round: a
PNG of a few dozen bytes declaring 30000x30000 pixels, a real blank 12000x12000 PNG (140 kB, 144
Mpx), 50 of those in one 7 MB request (what froze the server of issue 21 for 45 s), each of which
must get 413, and four blank 4096x4096 RGB images in one request, the most the server decodes, which
must get 200. A separate process asks ``GET /health`` every 20 ms throughout; the server's peak
resident memory (VmHWM) is read at the end. Prints failed valid requests (must be 0), the bombs not
answered as expected (must be 0), the slowest /health answer and the peak memory (must stay under
``--max-rss-mb``).

    python benchmarks/serve_load.py --quick                          # 5 s, 8 clients: a smoke test
    python benchmarks/serve_load.py --run runs/mnist-cnn-... --backend torch onnx   # 32 clients, 30 s
    python benchmarks/serve_load.py --hostile --backend torch        # 28 valid clients + 4 bombers, 30 s
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
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


def lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by ``nice`` (Linux: threads have a nice value of their own)."""
    if nice and sys.platform.startswith("linux"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class Client(threading.Thread):
    def __init__(self, url: str, rows: list, labels: list, stop_at: float, invalid: float, seed: int,
                 nice: int = 0):
        super().__init__(daemon=True)
        self.url, self.rows, self.labels, self.stop_at, self.invalid = url, rows, labels, stop_at, invalid
        self.nice = nice
        self.rng = np.random.default_rng(seed)
        self.latencies: list[float] = []
        self.valid_failed = 0
        self.invalid_sent = 0
        self.invalid_wrong = 0  # invalid requests not answered 422
        self.first_failure: str | None = None

    def run(self) -> None:
        import httpx

        lower_priority(self.nice)
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


def bomb_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header declares width x height pixels (its IHDR patched, CRC fixed)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def blank_png(width: int, height: int, mode: str = "L") -> bytes:
    """A real all-black PNG: about 1000 decoded bytes for each byte sent."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def bombs() -> list[tuple[str, list[tuple[str, bytes]], int]]:
    """The hostile uploads, in the order a bomber sends them: (what, files, the status it must get)."""
    huge = blank_png(12000, 12000)
    edge = blank_png(4096, 4096, "RGB")  # 16.8 Mpx: exactly the server's default max_pixels
    return [("declares 30000x30000", [("bomb.png", bomb_png(30000, 30000))], 413),
            ("blank 12000x12000", [("huge.png", huge)], 413),
            ("50 x blank 12000x12000", [(f"huge{i}.png", huge) for i in range(50)], 413),
            ("4 x blank 4096x4096 RGB", [(f"edge{i}.png", edge) for i in range(4)], 200)]


class Bomber(threading.Thread):
    """Sends the hostile uploads round after round until ``stop_at``; counts answers not as expected."""

    def __init__(self, url: str, uploads: list, stop_at: float, first: int, nice: int = 0):
        super().__init__(daemon=True)
        self.url, self.uploads, self.stop_at, self.first, self.nice = url, uploads, stop_at, first, nice
        self.sent = 0
        self.wrong = 0
        self.first_wrong: str | None = None

    def run(self) -> None:
        import httpx

        lower_priority(self.nice)
        with httpx.Client(base_url=self.url, timeout=60) as client:
            i = self.first
            while time.perf_counter() < self.stop_at:
                what, files, expected = self.uploads[i % len(self.uploads)]
                i += 1
                try:
                    response = client.post("/predict/image", files=[("files", (n, d, "image/png")) for n, d in files])
                    status, text = response.status_code, response.text[:200]
                except httpx.HTTPError as exc:
                    status, text = None, f"{type(exc).__name__}: {exc}"
                self.sent += 1
                if status != expected:
                    self.wrong += 1
                    self.first_wrong = self.first_wrong or f"{what}: expected {expected}, got {status}: {text}"


def probe_health(url: str, seconds: float, interval: float, out) -> None:
    """In a process of its own (the clients' GIL must not delay it): GET /health every ``interval``
    seconds; sends back the latencies (None for a failed probe)."""
    import httpx

    latencies: list[float | None] = []
    stop_at = time.perf_counter() + seconds
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                ok = client.get("/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started if ok else None)
            time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    out.send(latencies)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM, Linux), in MiB; NaN elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


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
        rss_before = peak_rss_mb(server.pid)
        bombers: list[Bomber] = []
        if args.hostile:
            uploads = bombs()
            receiver, sender = multiprocessing.Pipe(duplex=False)
            prober = multiprocessing.Process(target=probe_health, args=(url, args.seconds, 0.02, sender))
            prober.start()
        stop_at = time.perf_counter() + args.seconds
        valid_clients = args.clients - (args.bombers if args.hostile else 0)
        clients = [Client(url, rows, labels, stop_at, args.invalid, seed, args.nice) for seed in range(valid_clients)]
        if args.hostile:
            bombers = [Bomber(url, uploads, stop_at, first=i, nice=args.nice) for i in range(args.bombers)]
        t0 = time.perf_counter()
        for c in [*clients, *bombers]:
            c.start()
        for c in [*clients, *bombers]:
            c.join()
        wall = time.perf_counter() - t0
        after = httpx.get(f"{url}/health").json()
        rss_peak = peak_rss_mb(server.pid)
        health: list[float | None] = []
        if args.hostile:
            health = receiver.recv()
            prober.join()
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
            "batches": batches, "batched_requests": queued, "exit_code": exit_code,
            "rss_before_mb": rss_before, "rss_peak_mb": rss_peak,
            "bombs": sum(b.sent for b in bombers), "bombs_wrong": sum(b.wrong for b in bombers),
            "first_wrong_bomb": next((b.first_wrong for b in bombers if b.first_wrong), None),
            "health_probes": len(health), "health_failed": sum(h is None for h in health),
            "health_max_ms": max((h for h in health if h is not None), default=float("nan")) * 1000,
            "health_p99_ms": float(np.percentile([h for h in health if h is not None], 99)) * 1000
            if any(h is not None for h in health) else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="an image run directory (default: train a digits CNN in a few seconds)")
    parser.add_argument("--backend", nargs="+", default=["torch", "onnx", "onnx-int8"], choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--invalid", type=float, default=0.1, help="share of invalid requests")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="5 s and 8 clients per backend (12 with --hostile)")
    parser.add_argument("--hostile", action="store_true",
                        help="BOMBERS of the clients upload decompression bombs; /health is probed every 20 ms")
    parser.add_argument("--bombers", type=int, default=4, help="clients sending bombs with --hostile")
    parser.add_argument("--max-health-ms", type=float, default=100.0,
                        help="--hostile fails if a /health answer takes longer")
    parser.add_argument("--max-rss-mb", type=float, default=1536.0,
                        help="--hostile fails if the server's peak resident memory exceeds it: its model and "
                             "runtime, plus max_concurrency (2) images of max_pixels (16.8 Mpx) being decoded "
                             "and max_queue (64) request bodies")
    parser.add_argument("--nice", type=int, default=0,
                        help="lower the client threads' CPU priority by this much (Linux): on a machine the "
                             "clients share with the server, they then stand for remote machines")
    parser.add_argument("--runs-dir", default="/tmp/layerwise-bench-serve")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.clients = 5.0, 8 + (args.bombers if args.hostile else 0)
    if args.hostile and args.clients <= args.bombers:
        parser.error(f"--clients ({args.clients}) must exceed --bombers ({args.bombers})")
    run_path = Path(args.run) if args.run else quick_run(args.runs_dir)
    run = layerwise.load_run(run_path)
    rows, labels = image_pool(run)
    print(f"{run_path} ({run.config.model.family}, {len(rows)} distinct images); {args.clients} clients, "
          f"{args.seconds:g} s per backend, {args.invalid:.0%} invalid requests, max batch {args.max_batch}, "
          f"max wait {args.max_wait_ms:g} ms; {os.cpu_count()} CPU cores shared by clients and server"
          f"{f' (clients at nice +{args.nice})' if args.nice else ''}; load average before: "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    results = [load(run_path, backend, args, rows, labels) for backend in args.backend]
    header = ("backend", "req/s", "valid/s", "p50 ms", "p99 ms", "valid", "failed valid", "invalid", "invalid not 422",
              "rows/forward", "exit")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for r in results:
        print(f"| {r['backend']} | {r['requests_per_s']:.0f} | {r['valid_per_s']:.0f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['valid']} | {r['failed_valid']} | {r['invalid']} | {r['invalid_not_422']} | "
              f"{r['rows_per_batch']:.1f} | {r['exit_code']} |")
    if args.hostile:
        print(f"\nhostile: {args.bombers} of the {args.clients} clients sent decompression bombs; /health probed "
              f"every 20 ms from another process")
        header = ("backend", "bombs", "bombs not 413/200 as expected", "/health probes", "/health failed",
                  "/health p99 ms", "/health max ms", "RSS before MiB", "peak RSS MiB")
        print("| " + " | ".join(header) + " |")
        print("|" + " --- |" * len(header))
        for r in results:
            print(f"| {r['backend']} | {r['bombs']} | {r['bombs_wrong']} | {r['health_probes']} | "
                  f"{r['health_failed']} | {r['health_p99_ms']:.1f} | {r['health_max_ms']:.1f} | "
                  f"{r['rss_before_mb']:.0f} | {r['rss_peak_mb']:.0f} |")
    for r in results:
        if r["first_failure"]:
            print(f"{r['backend']}: first failed valid request: {r['first_failure']}")
        if r["first_wrong_bomb"]:
            print(f"{r['backend']}: first bomb not answered as expected: {r['first_wrong_bomb']}")
    failed = any(r["failed_valid"] or r["invalid_not_422"] or r["exit_code"] != 0 for r in results)
    if args.hostile:
        failed = failed or any(r["bombs_wrong"] or r["health_failed"] or not r["health_max_ms"] <= args.max_health_ms
                               or not r["rss_peak_mb"] <= args.max_rss_mb for r in results)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
