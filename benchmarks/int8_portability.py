"""int8 ONNX on CPUs without VNNI: why `layerwise export --int8` stores weights in 7 bits.

x86 CPUs without VNNI (AVX2; AVX-512 before Cascade Lake) run onnxruntime's uint8 x int8 kernels with
VPMADDUBSW, which adds each pair of products into a saturating int16: with 8-bit weights two products
(up to 255 x 127 each) can overflow it, and the same file computes something else there than on a
VNNI CPU. For the MNIST CNN (static int8) and MLP (dynamic int8) of benchmarks/inference.py, this
script quantizes one float32 export twice through `Run.export` — with onnxruntime's default 8-bit
weights, and with the 7-bit weights layerwise uses — and runs each file on this CPU and on an
emulated Haswell (AVX2, no VNNI; `qemu-x86_64 -cpu Haswell`, Debian's qemu-user): top-1 agreement
with the float32 file, accuracy and the largest logit difference on the first test rows, and
batch-64 latency on this CPU.

    python benchmarks/int8_portability.py --cnn RUN --mlp RUN   # runs made by benchmarks/inference.py
    python benchmarks/int8_portability.py                       # trains them first (~3 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

EMULATED_CPU = "Haswell"  # AVX2 without VNNI, as qemu's TCG emulates it


def evaluate(folder: Path) -> None:
    """Child mode: run every .onnx file in ``folder`` on inputs.npz and print one JSON line."""
    import onnxruntime as ort

    data = np.load(folder / "inputs.npz")
    x, y = data["x"], data["y"]
    outputs, latency = {}, {}
    for path in sorted(folder.glob("*.onnx")):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the same work on this CPU and under emulation
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outputs[path.stem] = session.run(None, {name: x})[0]
        if os.environ.get("TIME_IT"):
            session.run(None, {name: x[:64]})
            times = []
            for _ in range(30):
                start = time.perf_counter()
                session.run(None, {name: x[:64]})
                times.append((time.perf_counter() - start) * 1000)
            latency[path.stem] = float(np.median(times))
    reference = outputs.pop("fp32")
    result = {stem: {"agreement": float((out.argmax(1) == reference.argmax(1)).mean()),
                     "accuracy": float((out.argmax(1) == y).mean()),
                     "max_abs_diff": float(np.abs(out - reference).max()),
                     "b64_ms": latency.get(stem)} for stem, out in outputs.items()}
    result["fp32"] = {"accuracy": float((reference.argmax(1) == y).mean()), "b64_ms": latency.get("fp32")}
    print(json.dumps(result))


def with_weights_in_8_bits(function):
    """onnxruntime's quantize_static / quantize_dynamic with its default full-range int8 weights."""
    def call(*args, **kwargs):
        return function(*args, **{**kwargs, "reduce_range": False})
    return call


def export_files(run, mode: str, rows: int, folder: Path) -> None:
    """float32, int8 with 7-bit weights (layerwise) and int8 with 8-bit weights, plus the inputs."""
    from onnxruntime import quantization

    run.export("onnx", out=folder / "w7.onnx", int8=mode)
    (folder / "w7.fp32.onnx").rename(folder / "fp32.onnx")
    with mock.patch.object(quantization, "quantize_static", with_weights_in_8_bits(quantization.quantize_static)), \
         mock.patch.object(quantization, "quantize_dynamic", with_weights_in_8_bits(quantization.quantize_dynamic)):
        run.export("onnx", out=folder / "w8.onnx", int8=mode)
    (folder / "w8.fp32.onnx").unlink()
    test = run.data.test
    x = run.preprocessing.inputs.batch(test.x[:rows], train=False).numpy()
    np.savez(folder / "inputs.npz", x=x, y=test.y[:rows].numpy())


def measure(folder: Path, emulate: bool) -> dict:
    command = [os.path.realpath(sys.executable), __file__, "--evaluate", str(folder)]
    if emulate:
        command = ["qemu-x86_64", "-cpu", EMULATED_CPU, *command]
    env = {**os.environ, "TIME_IT": "" if emulate else "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaluate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cnn", type=Path, help="a trained MNIST CNN run to reuse")
    parser.add_argument("--mlp", type=Path, help="a trained MNIST MLP run to reuse")
    parser.add_argument("--rows", type=int, default=1000, help="test rows (emulation runs ~50x slower)")
    parser.add_argument("--runs-dir", default="/tmp/layerwise-bench-inference")
    args = parser.parse_args()
    if args.evaluate:
        return evaluate(args.evaluate)

    import layerwise
    sys.path.insert(0, str(Path(__file__).parent))
    from inference import CONFIGS

    emulate = shutil.which("qemu-x86_64") is not None
    if not emulate:
        print("qemu-x86_64 not found (apt-get install qemu-user): this CPU only")
    lines = ["| model | int8 | weights | CPU | agreement with fp32 | accuracy (fp32) | max abs logit diff | b64 p50 ms (fp32) |",
             "|" + " --- |" * 8]
    for name, mode in (("cnn", "static"), ("mlp", "dynamic")):
        given = getattr(args, name)
        config, overrides = CONFIGS[name]
        run = layerwise.load_run(given) if given else layerwise.train(config, runs_dir=args.runs_dir,
                                                                       overrides=overrides, quiet=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            export_files(run, mode, args.rows, folder)
            cpus = {"this CPU": measure(folder, emulate=False)}
            if emulate:
                cpus[f"{EMULATED_CPU} (qemu)"] = measure(folder, emulate=True)
        for weights in ("w8", "w7"):
            for cpu, result in cpus.items():
                r, ref = result[weights], result["fp32"]
                speed = f"{r['b64_ms']:.3f} ({ref['b64_ms']:.3f})" if r["b64_ms"] else "-"
                label = "8 bits (onnxruntime default)" if weights == "w8" else "**7 bits (layerwise)**"
                lines.append(f"| {name} ({run.path.name}) | {mode} | {label} | {cpu} | {r['agreement']:.4f} | "
                             f"{r['accuracy']:.4f} ({ref['accuracy']:.4f}) | {r['max_abs_diff']:.3f} | {speed} |")
    print(f"{args.rows} test rows, onnxruntime on 1 thread\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
