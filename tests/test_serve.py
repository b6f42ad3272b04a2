"""`layerwise serve`: the server started as a real subprocess on 127.0.0.1 and spoken to over HTTP.

Five servers, started together once per module: a small digits CNN on the torch backend
(validation, body limit, uploads, decompression bombs, micro-batching, metrics), a tabular MLP on
the onnx backend (exported into RUN/export/ at startup; non-finite numbers), the CNN again with a
long batching wait, to see SIGTERM drain a request in flight, the CNN behind a bearer token and TLS
with a queue of one request and a short timeout, and the CNN on every interface, where a token is
generated. The last tests drive the micro-batcher and the app in-process.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import ipaddress
import json
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
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
MAX_BODY_MB = 1.0  # small enough to exceed cheaply in a test, large enough for a few big blank PNGs


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
    """``python -m layerwise serve RUN --port P ARGS`` in a subprocess; ``ready()`` waits for /health.

    ``tls``: the certificate clients trust (the server speaks HTTPS); ``token``: the one ``client`` sends."""

    def __init__(self, run: Path, *args: str, cwd: Path, tls: Path | None = None, token: str | None = None):
        self.port = _free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(tls)) if tls else True
        self.proc = subprocess.Popen(cli_command("serve", run, "--port", self.port, "--log-level", "warning", *args),
                                     cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, timeout=30, verify=self.verify, headers=headers)

    def ready(self) -> Server:
        deadline = time.time() + 150  # the onnx server exports the model first
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.proc.stderr.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2, verify=self.verify).status_code == 200:
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
    # standardised inputs (not the default robust scaling, which clips): a huge value can still make the
    # model's output non-finite, a path the server must answer with 422
    table = layerwise.train({"name": "mlp", "data": {"source": "csv", "path": str(csv), "target": "target",
                                                     "scaling": "standard"},
                             "model": tiny_mlp(), "train": quick_train(epochs=15, lr=0.01)},
                            runs_dir=root / "runs", quiet=True)
    return {"image": image.path, "tabular": table.path, "root": root}


TOKEN = "a-test-token-of-more-than-16-characters"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A private key and a self-signed certificate for 127.0.0.1 (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    keyfile, certfile = folder / "key.pem", folder / "cert.pem"
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return keyfile, certfile


@pytest.fixture(scope="module")
def servers(runs):
    """The five servers, started together so that their startups (and the ONNX export) overlap."""
    started = {"cnn": Server(runs["image"], "--max-wait-ms", "20", "--max-rows", str(MAX_ROWS),
                             "--max-body-mb", str(MAX_BODY_MB), cwd=runs["root"]),
               "mlp": Server(runs["tabular"], "--backend", "onnx", cwd=runs["root"]),
               # a 1.5 s batching wait keeps a lone request queued in the batcher when SIGTERM arrives
               "drain": Server(runs["image"], "--max-wait-ms", "1500", cwd=runs["root"]),
               # every interface, no --token-file: a token is generated
               "open": Server(runs["image"], "--host", "0.0.0.0", cwd=runs["root"])}
    try:  # the certificate is made with cryptography (in the test lock); without it the TLS server is skipped
        keyfile, certfile = _self_signed(runs["root"])
    except ImportError:
        certfile = None
    if certfile is not None:
        token_file = runs["root"] / "token"
        token_file.write_text(TOKEN + "\n")
        # the same wait holds a request for longer than the timeout: a queue of one is full meanwhile
        started["guarded"] = Server(runs["image"], "--token-file", token_file, "--ssl-keyfile", keyfile,
                                    "--ssl-certfile", certfile, "--max-queue", "1", "--timeout-s", "1",
                                    "--max-wait-ms", "1500", cwd=runs["root"], tls=certfile, token=TOKEN)
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


@pytest.fixture(scope="module")
def guarded_server(servers):
    if "guarded" not in servers:
        pytest.skip("cryptography is not installed: no certificate for the TLS server")
    return servers["guarded"].ready()


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


# -- hostile inputs: decompression bombs, non-finite numbers ------------------------------------


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG of 1x1 pixel whose header declares width x height: a few dozen bytes that a decoder would
    try to expand into width x height pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height, after the signature and chunk head
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the chunk's CRC over its type and data
    return bytes(data)


def _blank_png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A real, all-black PNG: it compresses about 1000:1, so a small upload decodes into many pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def test_decompression_bombs_get_413_with_their_size_and_are_never_decoded(cnn_server):
    good = io.BytesIO()
    from PIL import Image

    Image.fromarray(_digits(1)[0][0]).save(good, "PNG")
    cases = {"30000x30000": _bomb_png(30000, 30000),  # 900 Mpx declared: over Pillow's own limit too
             "5000x5000": _bomb_png(5000, 5000),  # 25 Mpx: over the server's 16.8 Mpx
             "4100x4100": _blank_png(4100, 4100, "L")}  # a real one, 16.8 Mpx + a little
    for size, data in cases.items():
        started = time.perf_counter()
        response = cnn_server.client.post("/predict/image", files=[("files", ("ok.png", good.getvalue(), "image/png")),
                                                                    ("files", ("bomb.png", data, "image/png"))])
        assert response.status_code == 413, (size, response.text)
        detail = response.json()["detail"]
        assert detail.startswith("files[1] (bomb.png): ") and "pixels" in detail, detail
        width, height = (int(v) for v in size.split("x"))
        assert size in detail or f"{width * height:,}" in detail, detail  # the size it declares
        assert time.perf_counter() - started < 5  # refused from the header: nothing was decoded
    assert cnn_server.client.get("/health").json()["status"] == "ok"
    small = cnn_server.client.post("/predict/image", files=[("files", ("ok.png", good.getvalue(), "image/png"))])
    assert small.status_code == 200


def test_health_answers_quickly_while_large_images_decode(cnn_server):
    # 16 blank 4096x4096 RGB images (16.8 Mpx each, the most the server takes; 50 kB each) per request:
    # seconds of decoding, which must happen beside the event loop, not on it
    image = _blank_png(4096, 4096)
    files = [("files", (f"{i}.png", image, "image/png")) for i in range(16)]
    answers: list[int] = []

    def upload() -> None:
        with httpx.Client(base_url=cnn_server.url, timeout=60) as client:
            answers.append(client.post("/predict/image", files=files).status_code)

    threads = [threading.Thread(target=upload) for _ in range(2)]
    uploading = time.perf_counter()
    for t in threads:
        t.start()
    latencies = []
    with httpx.Client(base_url=cnn_server.url, timeout=30) as client:
        while any(t.is_alive() for t in threads):
            started = time.perf_counter()
            assert client.get("/health").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.05)
    for t in threads:
        t.join()
    uploads_s = time.perf_counter() - uploading
    assert answers == [200, 200]
    # decoded on the event loop, /health waited for a whole request's decoding: about half the time
    # the two uploads took. The bound leaves room for a busy 2-core test machine, and grows with the
    # uploads when other processes slow everything down (benchmarks/serve_load.py --hostile: under 100 ms)
    assert max(latencies) < max(0.5, uploads_s / 4), (sorted(latencies)[-5:], uploads_s)
    assert len(latencies) > 5, latencies  # the decoding lasted a while: /health was asked throughout


def test_health_and_metadata_name_no_absolute_path_and_no_process_id(cnn_server, runs):
    for path in ("/health", "/metadata"):
        response = cnn_server.client.get(path)
        text = response.text
        assert response.status_code == 200 and "pid" not in response.json(), text
        assert str(runs["root"]) not in text and str(Path(runs["root"]).resolve()) not in text, text
        assert str(cnn_server.proc.pid) not in text.replace(".", " ").split('"'), text
        assert response.json()["run"] == runs["image"].name  # the run's name, not where it lies


def test_metrics_count_requests_batches_and_the_queue(cnn_server):
    cnn_server.predict(_digits(2)[0].tolist())
    cnn_server.predict([[[300] * 8] * 8])  # a 422
    response = cnn_server.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line and not line.startswith("#")}
    assert lines['layerwise_requests_total{endpoint="/predict",method="POST",status="200"}'] >= 1
    assert lines['layerwise_requests_total{endpoint="/predict",method="POST",status="422"}'] >= 1
    assert lines["layerwise_batch_rows_count"] >= 1 and lines["layerwise_batch_rows_sum"] >= 2
    assert lines['layerwise_request_duration_seconds_count{endpoint="/predict"}'] >= 2
    assert "layerwise_requests_in_progress" in lines and "layerwise_batcher_queue_depth" in lines
    assert lines["process_resident_memory_bytes"] > 0


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


def test_non_finite_and_overflowing_numbers_get_422_naming_the_field(mlp_server):
    # raw bodies: NaN, Infinity and 1e999 are what Python's JSON reader turns into nan and inf
    cases = {"NaN": "inputs[1].a: expected a finite number, got NaN",
             "Infinity": "inputs[1].a: expected a finite number, got Infinity",
             "-Infinity": "inputs[1].a: expected a finite number, got -Infinity",
             "1e999": "inputs[1].a: expected a finite number, got Infinity",
             "1e308": "inputs[1].a: 1e+308 is too large",
             "9" * 400: "inputs[1].a: an integer of about 400 digits is too large",
             # float32 holds it, but the model does not: no answer rather than null probabilities
             "3.2e38": "inputs[1]: the model's output is not finite for this row"}
    for value, fragment in cases.items():
        body = ('{"inputs": [{"a": 0.5, "b": 4.0, "color": "red"}, {"a": %s, "b": 4.0, "color": "red"}]}' % value)
        response = mlp_server.client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422 and fragment in _message(response), (value, response.text)
    body = '{"inputs": [[0.5, 4.0, NaN]]}'  # a category that is no value at all
    response = mlp_server.client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "inputs[0].color: expected a string, a finite number or null" in \
        _message(response)
    ok = mlp_server.predict([{"a": 0.5, "b": None, "color": None}, {"a": 1e6, "b": -1e6, "color": "red"}])
    assert ok.status_code == 200 and all(p["probabilities"]["0"] is not None for p in ok.json()["predictions"])


# -- bearer token, TLS, a full queue, a timeout -------------------------------------------------


def test_the_bearer_token_guards_everything_but_health(guarded_server):
    with httpx.Client(base_url=guarded_server.url, timeout=30, verify=guarded_server.verify) as anonymous:
        for method, path in (("GET", "/metadata"), ("POST", "/predict"), ("GET", "/metrics"), ("GET", "/docs"),
                             ("GET", "/openapi.json"), ("POST", "/predict/image")):
            response = anonymous.request(method, path, json={"inputs": []})
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", (path,
                                                                                                   response.text)
            assert "Authorization: Bearer" in response.json()["detail"]
        wrong = anonymous.get("/metadata", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong bearer token"
        assert anonymous.get("/metadata", headers={"Authorization": TOKEN}).status_code == 401  # no scheme
        assert anonymous.get("/health").status_code == 200  # liveness probes need no secret
    assert guarded_server.client.get("/metadata").status_code == 200
    metrics = guarded_server.client.get("/metrics")
    assert metrics.status_code == 200
    assert 'layerwise_requests_total{endpoint="/metadata",method="GET",status="401"}' in metrics.text


def test_tls_serves_https_only(guarded_server):
    assert guarded_server.url.startswith("https://")
    assert guarded_server.client.get("/health").status_code == 200  # verified against the test's certificate
    with pytest.raises(httpx.TransportError):
        httpx.get(guarded_server.url.replace("https://", "http://") + "/health", timeout=5)
    with pytest.raises(httpx.ConnectError):  # a certificate nobody vouches for is refused by default
        httpx.get(guarded_server.url + "/health", timeout=5)


def test_a_full_queue_gets_503_with_retry_after_and_a_request_held_too_long_times_out(guarded_server):
    pixels = _digits(1)[0].tolist()
    first: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: first.update(response=guarded_server.predict(pixels)))
    started = time.perf_counter()
    thread.start()
    deadline = time.time() + 10
    while guarded_server.client.get("/health").json()["pending"] < 1:  # held in the batcher (1.5 s wait)
        assert time.time() < deadline and thread.is_alive()
        time.sleep(0.02)
    second = guarded_server.predict(pixels)  # a queue of one, held: refused at once, its body unread
    assert second.status_code == 503 and second.headers["retry-after"] == "1", second.text
    assert "max_queue" in second.json()["detail"]
    thread.join(30)
    response = first["response"]
    assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
    assert "timeout_s" in response.json()["detail"]
    assert 0.9 < time.perf_counter() - started < 5  # --timeout-s 1, not the 1.5 s the batch waited
    # the batch it sat in is formed (1.5 s after it arrived) and dropped: no forward for a caller who has gone
    deadline = time.time() + 15
    health = guarded_server.client.get("/health").json()
    while health["dropped"] < 1 and time.time() < deadline:
        time.sleep(0.1)
        health = guarded_server.client.get("/health").json()
    assert health["pending"] == 0 and health["dropped"] >= 1, health
    metrics = guarded_server.client.get("/metrics").text
    assert 'layerwise_requests_total{endpoint="/predict",method="POST",status="503"} 2.0' in metrics


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
    code, _, err = cli("serve", runs["image"], "--ssl-keyfile", tmp_path / "key.pem", cwd=tmp_path, timeout=60)
    assert_one_line_error(code, err, "--ssl-keyfile needs --ssl-certfile")
    code, _, err = cli("serve", runs["image"], "--token-file", tmp_path / "missing", cwd=tmp_path, timeout=60)
    assert_one_line_error(code, err, "--token-file: file not found")


def test_token_files_are_checked_and_only_loopback_is_open_by_default(tmp_path):
    from layerwise.core.errors import ConfigError
    from layerwise.tools.serve import _given_token
    from layerwise.tools.serve.guards import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "localhost", "::1"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.org"))
    assert _given_token(None, True) == (None, None)
    short = tmp_path / "short"
    short.write_text("secret\n")
    with pytest.raises(ConfigError, match="fewer than 16 characters"):
        _given_token(short, True)
    with pytest.raises(ConfigError, match="contradict"):
        _given_token(short, False)


def test_beyond_loopback_a_token_is_generated_into_a_private_file(servers):
    server = servers["open"].ready()  # listening on 0.0.0.0 without --token-file
    lines: list[str] = []  # printed before uvicorn started; read aside, in case a line never comes
    reader = threading.Thread(target=lambda: lines.extend(server.proc.stdout.readline() for _ in range(2)),
                              daemon=True)
    reader.start()
    reader.join(10)
    assert len(lines) == 2 and "generated into" in lines[1], lines
    path = Path(lines[1].split("generated into ")[1].split(" ")[0])
    assert path.stat().st_mode & 0o777 == 0o600  # its owner's only
    token = path.read_text().strip()
    assert len(token) >= 32 and token not in "".join(lines)  # the path is printed, never the token
    assert server.client.get("/metadata").status_code == 401
    assert server.client.get("/metadata", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    server.proc.terminate()
    assert server.proc.wait(15) == 0
    assert not path.exists()  # a new one at the next start
    assert "plain HTTP on 0.0.0.0" in server.proc.stderr.read()


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


# -- the app in-process ---------------------------------------------------------------------------


def test_workers_get_every_limit_and_the_token_from_the_environment(runs, monkeypatch):
    # what --workers N hands each worker: the settings in LAYERWISE_SERVE_*, the token by its file
    from starlette.testclient import TestClient

    from layerwise.tools.serve import ENV, app_from_env

    token_file = runs["root"] / "worker-token"
    token_file.write_text(TOKEN)
    values = {"run": str(runs["image"]), "max_queue": "7", "timeout_s": "2.5", "max_concurrency": "3",
              "max_pixels": "1000", "max_rows": "5", "token_file": str(token_file)}
    for key, value in values.items():
        monkeypatch.setenv(ENV[key], value)
    with TestClient(app_from_env()) as client:
        assert client.get("/metadata").status_code == 401
        limits = client.get("/metadata", headers={"Authorization": f"Bearer {TOKEN}"}).json()["limits"]
        assert {k: limits[k] for k in ("max_queue", "timeout_s", "max_concurrency", "max_pixels", "max_rows")} == \
            {"max_queue": 7, "timeout_s": 2.5, "max_concurrency": 3, "max_pixels": 1000, "max_rows": 5}


def test_no_more_images_decode_at_once_than_max_concurrency(runs, monkeypatch):
    import layerwise.data.images as images
    from layerwise.tools.serve import create_app

    decoding, most = 0, 0
    lock = threading.Lock()
    load_images = images.load_images

    def slow_load(*args, **kwargs):  # the real decoder, slowed down, counting how many run at once
        nonlocal decoding, most
        with lock:
            decoding += 1
            most = max(most, decoding)
        time.sleep(0.1)
        try:
            return load_images(*args, **kwargs)
        finally:
            with lock:
                decoding -= 1

    monkeypatch.setattr(images, "load_images", slow_load)
    app = create_app(runs["image"], max_concurrency=2)
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(_digits(1)[0][0]).save(png, "PNG")

    async def scenario():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
                return await asyncio.gather(*(client.post("/predict/image", files=[("files", ("a.png", png.getvalue()))])
                                              for _ in range(6)))

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 6
    assert most == 2


def test_public_answers_shorten_absolute_paths():
    from layerwise.tools.serve.app import _no_absolute_paths

    config = {"family": "python", "target": "/home/me/nets/model.py:Net", "options": ["~/x/y.txt", "relative/a"],
              "windows": "C:\\Users\\me\\net.py:Net", "ratio": 0.5}
    assert _no_absolute_paths(config) == {"family": "python", "target": "model.py:Net", "options": ["y.txt", "relative/a"],
                                          "windows": "net.py:Net", "ratio": 0.5}
