"""MNIST: wall time and test accuracy of examples/mnist.yaml (train + evaluate, end to end).

    python benchmarks/mnist.py                     # the example as it is
    python benchmarks/mnist.py --set train.epochs=3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import layerwise

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "examples" / "mnist.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--runs-dir", default="/tmp/layerwise-bench-mnist")
    args = parser.parse_args()
    overrides = [f"data.path={ROOT / '..' / 'shared' / 'data' / 'mnist'}", *args.overrides]
    start = time.perf_counter()
    run = layerwise.train(args.config, runs_dir=args.runs_dir, overrides=overrides)
    wall = time.perf_counter() - start
    m = run.metrics
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"MNIST {run.config.model.family}: test accuracy {m['metrics']['accuracy']:.4f} "
          f"({round((1 - m['metrics']['accuracy']) * 10000)} errors / 10000), "
          f"training {m['training']['duration_s']:.0f} s, wall {wall:.0f} s (load + train + evaluate + report), "
          f"{m['training']['epochs_run']} epochs, {m['training']['parameters']:,} parameters")
    print(f"run: {run.path}")


if __name__ == "__main__":
    main()
