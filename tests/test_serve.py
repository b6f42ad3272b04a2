"""`layerwise serve`: the server started as a real subprocess on 127.0.0.1 and spoken to over HTTP.

Three servers, started together once per module: a small digits CNN on the torch backend
(validation, body limit, uploads, micro-batching), a tabular MLP on the onnx backend (exported into
RUN/export/ at startup) and the CNN again with a long batching wait, to see SIGTERM drain a request
in flight. The last test drives the micro-batcher alone, with a stand-in model that fails on purpose.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    assert_one_line_error,
    cli,
    cli_command,
    cli_env,
    quick_train,
    tiny_mlp,
    write_csv,
    write_npz,
)

import layerwise
from layerwise.tools.serve import MicroBatcher

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

MAX_ROWS = 32
MAX_BODY_MB = 0.05  # 52,428 bytes: small enough to exceed cheaply in a test


def _digits(count: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return pixels[start:start + count], digits.target[start:start + count]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m layerwise serve RUN --port P ARGS`` in a subprocess; ``ready()`` waits for /health."""

    def __init__(self, run: Path, *args: str, cwd: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(cli_command("serve", run, "--port", self.port, "--log-level", "warning", *args),
                                     cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def ready(self) -> Server:
        deadline = time.time() + 150  # the onnx server exports the model first
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.proc.stderr.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server did not answer /health in time")
            time.sleep(0.1)

    def predict(self, inputs) -> httpx.Response:
        return self.client.post("/predict", json={"inputs": inputs})

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A small image CNN (400 digits from an .npz) and a tabular MLP (numeric + text columns, gaps)."""
    root = tmp_path_factory.mktemp("serve")
    x, y = _digits(400)
    npz = write_npz(root, "digits.npz", x=x, y=y)
    image = layerwise.train({"name": "cnn", "data": {"source": "npz", "path": str(npz)},
                             "model": {"family": "cnn", "channels": [8], "dropout": 0.0},
                             "train": quick_train(epochs=4, lr=0.01)}, runs_dir=root / "runs", quiet=True)
    csv = write_csv(root, n=120)
    table = layerwise.train({"name": "mlp", "data": {"source": "csv", "path": str(csv), "target": "target"},
                             "model": tiny_mlp(), "train": quick_train(epochs=15, lr=0.01)},
                            runs_dir=root / "runs", quiet=True)
    return {"image": image.path, "tabular": table.path, "root": root}


@pytest.fixture(scope="module")
def servers(runs):
    """The three servers, started together so that their startups (and the ONNX export) overlap."""
    started = {"cnn": Server(runs["image"], "--max-wait-ms", "20", "--max-rows", str(MAX_ROWS),
                             "--max-body-mb", str(MAX_BODY_MB), cwd=runs["root"]),
               "mlp": Server(runs["tabular"], "--backend", "onnx", cwd=runs["root"]),
               # a 1.5 s batching wait keeps a lone request queued in the batcher when SIGTERM arrives
               "drain": Server(runs["image"], "--max-wait-ms", "1500", cwd=runs["root"])}
    yield started
    for server in started.values():  # SIGTERM to all first: they shut down side by side
        if server.proc.poll() is None:
            server.proc.terminate()
    for server in started.values():
        server.stop()


@pytest.fixture(scope="module")
def cnn_server(servers):
    return servers["cnn"].ready()


@pytest.fixture(scope="module")
def mlp_server(servers):
    return servers["mlp"].ready()


# -- image run, torch backend ------------------------------------------------------------------


def test_health_and_metadata(cnn_server, runs):
    health = cnn_server.client.get("/health").json()
    assert health["status"] == "ok" and health["backend"] == "torch" and health["uptime_s"] > 0
    meta = cnn_server.client.get("/metadata").json()
    run = layerwise.load_run(runs["image"])
    assert meta["input"]["kind"] == "image" and meta["input"]["shape"] == [8, 8]
    assert meta["output"]["classes"] == list(range(10))
    card = meta["model"]
    assert card["family"] == "cnn" and card["parameters"] == sum(p.numel() for p in run.model.parameters())
    assert card["metrics"] == pytest.approx(run.metrics["metrics"]) and card["created"]
    assert meta["limits"]["max_rows"] == MAX_ROWS
    assert cnn_server.client.get("/docs").status_code == 200  # FastAPI's OpenAPI docs
    assert "/predict" in cnn_server.client.get("/openapi.json").json()["paths"]


def test_json_images_give_the_labels_of_run_predict(cnn_server, runs):
    pixels, _ = _digits(20, start=1000)  # digits the model never saw
    response = cnn_server.predict(pixels.tolist())
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = layerwise.load_run(runs["image"]).predict(pixels)
    assert [p["label"] for p in predictions] == expected["label"].tolist()
    assert len(set(expected["label"].tolist())) > 2  # a model that says one class everywhere proves little
    proba = np.array([[p["probabilities"][str(c)] for c in range(10)] for p in predictions])
    np.testing.assert_allclose(proba, expected["proba"], atol=1e-5)


def test_multipart_upload_matches_predict_on_the_files(cnn_server, runs, tmp_path):
    from PIL import Image

    pixels, _ = _digits(4, start=1200)
    folder = tmp_path / "uploads"
    folder.mkdir()
    files = []
    for i, image in enumerate(pixels):  # 16x16 RGB: resized and converted as Run.predict reads files
        path = folder / f"{i}.png"
        Image.fromarray(image).resize((16, 16)).convert("RGB").save(path)
        files.append(("files", (path.name, path.read_bytes(), "image/png")))
    response = cnn_server.client.post("/predict/image", files=files)
    assert response.status_code == 200, response.text
    expected = layerwise.load_run(runs["image"]).predict(folder)
    assert [p["label"] for p in response.json()["predictions"]] == expected["label"].tolist()
    broken = cnn_server.client.post("/predict/image", files=files[:1] + [("files", ("notes.txt", b"hello", "text/plain"))])
    assert broken.status_code == 422 and "files[1] (notes.txt): not a readable image" in broken.text


def _message(response) -> str:
    return " | ".join(err["msg"] for err in response.json()["detail"])


def test_bad_requests_get_422_naming_the_field_and_the_server_stays_up(cnn_server):
    good = _digits(2)[0].tolist()
    malformed = cnn_server.client.post("/predict", content=b'{"inputs": [[1, 2', headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["type"] == "json_invalid"

    short = [row[:7] for row in good[1]]  # 8 rows of 7 pixels
    response = cnn_server.predict([good[0], short])
    assert response.status_code == 422 and _message(response) == "inputs[1]: expected 8x8 pixels, got 8x7"
    assert response.json()["detail"][0]["loc"] == ["body", "inputs"]
    assert "input" not in response.json()["detail"][0]  # the rejected batch is not echoed back

    cases = {"inputs[0]: pixel values must lie in 0..255, got 300": [[[300] * 8] * 8],
             "inputs[1]: expected 8x8 pixels as nested lists of numbers 0-255": [good[0], [["a"] * 8] * 8],
             "inputs[0]: expected 8x8 pixels, got rows of different lengths": [[[0] * 8] * 7 + [[0] * 3]],
             "max_rows": [good[0]] * (MAX_ROWS + 1),
             "inputs: empty": []}
    for fragment, inputs in cases.items():
        response = cnn_server.predict(inputs)
        assert response.status_code == 422 and fragment in _message(response), (fragment, response.text)
    extra = cnn_server.client.post("/predict", json={"inputs": good, "threshold": 0.5})
    assert extra.status_code == 422 and extra.json()["detail"][0]["loc"] == ["body", "threshold"]
    assert cnn_server.client.post("/predict", json=[good]).status_code == 422  # not an object

    assert cnn_server.proc.poll() is None
    assert cnn_server.predict(good).status_code == 200


def test_oversized_bodies_get_413_before_parsing(cnn_server):
    limit = int(MAX_BODY_MB * 1024 * 1024)
    body = json.dumps({"inputs": [[[255] * 8] * 8] * 30}).encode()  # valid JSON, under max_rows
    body = body[:-2] + b" " * limit + body[-2:]  # padded with whitespace past the limit
    response = cnn_server.client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "max_body_bytes" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced on the bytes as they stream in
        yield body[: limit // 2]
        yield body[limit // 2:]

    streamed = cnn_server.client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert cnn_server.predict(_digits(1)[0].tolist()).status_code == 200


def test_concurrent_requests_are_answered_correctly_and_batched(cnn_server, runs):
    pixels, _ = _digits(24, start=1400)
    expected = layerwise.load_run(runs["image"]).predict(pixels)["label"].tolist()
    before = cnn_server.client.get("/health").json()
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(pixels))

    def ask(i: int) -> None:
        with httpx.Client(base_url=cnn_server.url, timeout=30) as client:
            barrier.wait()
            response = client.post("/predict", json={"inputs": [pixels[i].tolist()]})
            results[i] = response.json()["predictions"][0]["label"] if response.status_code == 200 else response.text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(pixels))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results.get(i) for i in range(len(pixels))] == expected
    after = cnn_server.client.get("/health").json()
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == len(pixels)
    assert batches < requests, after  # the micro-batcher merged concurrent requests into shared forwards
    assert after["largest_batch"] > 1 and after["failed"] == 0


# -- tabular run, onnx backend -----------------------------------------------------------------


def test_tabular_rows_on_onnx_match_run_predict(mlp_server, runs):
    assert (runs["tabular"] / "export" / "model.onnx").is_file()  # exported by the server at startup
    assert mlp_server.client.get("/health").json()["backend"] == "onnx"
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(size=12), "b": rng.normal(5, 2, size=12),
                          "color": rng.choice(["red", "green", "blue"], size=12).astype(object)})
    frame.loc[2, "b"] = np.nan
    frame.loc[4, "color"] = None
    frame.loc[5, "color"] = "purple"  # unseen level
    rows = [{"a": r.a, "b": None if pd.isna(r.b) else r.b, "color": None if pd.isna(r.color) else r.color}
            for r in frame.itertuples()]  # null: a missing value, as an empty cell in a CSV
    rows[1] = [rows[1]["a"], rows[1]["b"], rows[1]["color"]]  # a list in column order works too
    response = mlp_server.predict(rows)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = layerwise.load_run(runs["tabular"]).predict(frame)
    assert [p["label"] for p in predictions] == expected["label"].tolist()
    assert len(set(expected["label"].tolist())) == 2
    proba = np.array([[p["probabilities"]["0"], p["probabilities"]["1"]] for p in predictions])
    np.testing.assert_allclose(proba, expected["proba"], atol=1e-4)  # ONNX Runtime vs PyTorch: export parity


def test_tabular_validation_names_the_column(mlp_server):
    row = {"a": 0.1, "b": 4.0, "color": "red"}
    cases = {"inputs[1]: unknown column 'age'; the run's columns are a, b, color": [row, {**row, "age": 3}],
             "inputs[0].a: expected a number or null, got a string 'x'": [{**row, "a": "x"}],
             "inputs[0]: column 'b' is missing": [{"a": 1.0, "color": "red"}],
             "inputs[0]: expected 3 values (a, b, color), got 2": [[1.0, 2.0]],
             "inputs[0].color: expected a string, a number or null, got a list": [{**row, "color": ["red"]}]}
    for fragment, inputs in cases.items():
        response = mlp_server.predict(inputs)
        assert response.status_code == 422 and fragment in _message(response), (fragment, response.text)
    upload = mlp_server.client.post("/predict/image", files=[("files", ("a.png", b"x", "image/png"))])
    assert upload.status_code == 422 and "takes tabular inputs" in upload.text
    assert mlp_server.predict([row]).status_code == 200


# -- shutdown and the command line -------------------------------------------------------------


def test_sigterm_answers_the_request_in_flight_then_exits_zero(servers, runs):
    server = servers["drain"].ready()
    pixels, _ = _digits(1, start=1600)
    answer: dict[str, object] = {}
    thread = threading.Thread(target=lambda: answer.update(response=server.predict(pixels.tolist())))
    thread.start()
    time.sleep(0.5)  # the request waits in the batcher (max wait 1.5 s)
    server.proc.send_signal(signal.SIGTERM)
    started = time.time()
    code = server.proc.wait(15)
    thread.join(15)
    assert code == 0 and time.time() - started < 10
    response = answer["response"]
    assert response.status_code == 200
    expected = layerwise.load_run(runs["image"]).predict(pixels)["label"].tolist()
    assert [p["label"] for p in response.json()["predictions"]] == expected
    assert f"at {server.url}" in server.proc.stdout.read()  # the URL is printed


def test_cli_errors_are_one_line_before_starting(runs, tmp_path):
    code, _, err = cli("serve", runs["image"], "--backend", "tensorflow", cwd=tmp_path, timeout=60)
    assert_one_line_error(code, err, "--backend", "tensorflow", "torch, onnx")
    code, _, err = cli("serve", tmp_path / "no-such-run", cwd=tmp_path, timeout=60)
    assert_one_line_error(code, err, "run directory not found")



# -- the micro-batcher on its own ----------------------------------------------------------------


def test_a_failing_row_fails_only_its_own_request_and_close_drains_the_queue():
    forwards: list[int] = []

    def predict(x: torch.Tensor) -> dict[str, np.ndarray]:  # a stand-in model: doubles, refuses negatives
        forwards.append(len(x))
        if (x < 0).any():
            raise ValueError("negative input")
        return {"value": (x * 2).numpy()}

    async def scenario():
        batcher = MicroBatcher(predict, max_batch=8, max_wait_ms=50)
        await batcher.start()
        requests = [torch.full((n, 1), float(v)) for v, n in ((1, 2), (-1, 1), (3, 3))]
        answers = await asyncio.gather(*(batcher.submit(x) for x in requests), return_exceptions=True)
        queued = [asyncio.ensure_future(batcher.submit(torch.full((1, 1), 5.0))) for _ in range(3)]
        await asyncio.sleep(0)  # queued, not yet answered: close() must answer them before stopping
        await batcher.close()
        return answers, [q.result() for q in queued], batcher.stats()

    answers, drained, stats = asyncio.run(scenario())
    np.testing.assert_array_equal(answers[0]["value"], [[2.0], [2.0]])
    assert isinstance(answers[1], ValueError)
    np.testing.assert_array_equal(answers[2]["value"], [[6.0]] * 3)
    assert forwards[0] == 6  # the three requests shared one forward, then ran alone after it failed
    assert [d["value"].tolist() for d in drained] == [[[10.0]]] * 3
    assert stats["failed"] == 1 and stats["requests"] == 6


def test_onnx_int8_backend_serves_the_quantized_export(runs):
    # in-process: the server calls the backend exactly so; a fourth subprocess would only add startup time
    from layerwise.tools.serve.backends import make_backend

    run = layerwise.load_run(runs["image"])
    backend = make_backend(run, "onnx-int8")
    assert backend.path == runs["image"] / "export" / "model.int8.onnx" and backend.name == "onnx-int8"
    x = run.data.test.x[:64]
    got = backend(x)["label"]
    expected = make_backend(run, "torch")(x)["label"]
    assert (got == expected).mean() >= 0.9  # int8 static: agreement, not float32 parity
