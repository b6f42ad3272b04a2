"""Inference: latency, size on disk and accuracy of one trained model in four runtimes.

For each model (the MNIST CNN of examples/mnist.yaml, an MLP on MNIST, a GRU text classifier on
examples/data/play_lines.csv): PyTorch eager (float32), PyTorch int8 (dynamic quantization, as
`layerwise compress --quantize dynamic` makes it), ONNX Runtime float32 and ONNX Runtime int8 (static,
as `layerwise export --int8 static` makes it; dynamic for the GRU, whose time is in matrix products).
Latency p50/p99 at batch 1 and batch 64 over many calls after a warm-up, every runtime on the same
number of threads; accuracy on the whole test split; ratios against PyTorch eager.

    python benchmarks/inference.py                              # trains the three models first (~4 min on 2 cores)
    python benchmarks/inference.py --cnn RUN --mlp RUN --gru RUN  # reuse trained runs
    python benchmarks/inference.py --quick                      # tiny models on the bundled digits: a smoke test
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import layerwise
from layerwise.ops.quantize import quantize_dynamic

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"



def _yaml(name: str) -> dict:
    import yaml

    config = yaml.safe_load((ROOT / "examples" / name).read_text())
    config["data"]["path"] = str(ROOT / config["data"]["path"])
    return config


CONFIGS = {
    "cnn": (str(ROOT / "examples" / "mnist.yaml"), [f"data.path={MNIST}", "train.epochs=3"]),
    "mlp": ({"name": "mnist-mlp", "data": {"source": "idx", "path": str(MNIST), "val_fraction": 0.05},
             "model": {"family": "mlp", "hidden": [256, 128], "dropout": 0.1},
             "train": {"epochs": 5, "batch_size": 128, "optimizer": "adamw", "lr": 0.002, "scheduler": "onecycle"}}, []),
    "gru": ({**_yaml("text_classification.yaml"), "name": "plays-gru",
             "model": {"family": "gru", "hidden": 128, "layers": 1, "dropout": 0.2}}, ["train.epochs=10"]),
}
QUICK = {
    "cnn": ({"name": "digits-cnn", "data": {"source": "builtin", "name": "digits"},
             "model": {"family": "cnn", "channels": [8, 16]}, "train": {"epochs": 2}}, []),
    "mlp": ({"name": "digits-mlp", "data": {"source": "builtin", "name": "digits"},
             "model": {"family": "mlp", "hidden": [64]}, "train": {"epochs": 2}}, []),
}


def percentiles(fn, x, repeats: int) -> tuple[float, float]:
    for _ in range(5):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def torch_runner(model):
    def run(x):
        with torch.inference_mode():
            return model(x).numpy()
    return run


def onnx_runner(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def weights_size(model, folder: Path) -> int:
    """Bytes of the model as `layerwise compress` would store it: a state dict on disk."""
    path = folder / "weights.pt"
    torch.save(model.state_dict(), path)  # quantized modules pack their int8 weights into the state dict
    return path.stat().st_size


def bench(label: str, run, repeats: int, threads: int) -> list[dict]:
    pre = run.preprocessing.inputs
    test = run.data.test
    x_all = pre.batch(test.x, train=False)
    y = test.y.numpy()
    x1, x64 = x_all[:1], x_all[:64]
    family = run.config.model.family
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp32 = run.model.eval()
        int8 = quantize_dynamic(run.load_model().eval(), family)
        mode = "dynamic" if family in ("gru", "lstm", "rnn", "mlp") else "static"
        onnx32 = run.export("onnx", out=folder / "model.onnx").path
        onnx8 = run.export("onnx", out=folder / "model.int8.onnx", int8=mode).path
        variants = [("torch eager fp32", torch_runner(fp32), weights_size(fp32, folder)),
                    ("torch int8 (dynamic)", torch_runner(int8), weights_size(int8, folder)),
                    ("onnxruntime fp32", onnx_runner(onnx32, threads), onnx32.stat().st_size),
                    (f"onnxruntime int8 ({mode})", onnx_runner(onnx8, threads), onnx8.stat().st_size)]
        rows = []
        for name, fn, size in variants:
            logits = np.concatenate([fn(x_all[i:i + 1000]) for i in range(0, len(x_all), 1000)])
            p50_1, p99_1 = percentiles(fn, x1, repeats)
            p50_64, p99_64 = percentiles(fn, x64, max(repeats // 4, 20))
            rows.append({"model": label, "runtime": name, "size": size, "accuracy": float((logits.argmax(1) == y).mean()),
                         "b1_p50": p50_1, "b1_p99": p99_1, "b64_p50": p50_64, "b64_p99": p99_64})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | runtime | size KiB | x smaller | accuracy | b1 p50 ms | b1 p99 ms | b1 x faster | "
             "b64 p50 ms | b64 p99 ms | b64 x faster |", "|" + " --- |" * 11]
    base = {}
    for r in rows:
        ref = base.setdefault(r["model"], r)
        lines.append(f"| {r['model']} | {r['runtime']} | {r['size'] / 1024:.0f} | {ref['size'] / r['size']:.2f} | "
                     f"{r['accuracy']:.4f} | {r['b1_p50']:.3f} | {r['b1_p99']:.3f} | {ref['b1_p50'] / r['b1_p50']:.2f} | "
                     f"{r['b64_p50']:.3f} | {r['b64_p99']:.3f} | {ref['b64_p50'] / r['b64_p50']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in CONFIGS:
        parser.add_argument(f"--{name}", type=Path, help=f"a trained {name} run to reuse")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls at batch 1 (batch 64: a quarter)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for every runtime")
    parser.add_argument("--runs-dir", default="/tmp/layerwise-bench-inference")
    parser.add_argument("--quick", action="store_true", help="tiny models on the bundled digits")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = QUICK if args.quick else CONFIGS
    rows = []
    for name, (config, overrides) in configs.items():
        given = getattr(args, name, None)
        run = layerwise.load_run(given) if given else layerwise.train(config, runs_dir=args.runs_dir, overrides=overrides,
                                                                       quiet=True)
        rows += bench(f"{name} ({run.config.model.family})", run, 20 if args.quick else args.repeats, args.threads)
    text = (f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs\n\n" + table(rows))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
