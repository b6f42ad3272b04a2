"""Compression on MNIST: quantization and pruning of the MNIST CNN, pruning of LeNet-300-100, distillation.

Every row is a real `layerwise compress` run written beside its original (the same code path as the
CLI), so each has its comparison table in its own report.

- The MNIST CNN (examples/mnist.yaml, 3 epochs here): dynamic and static int8; magnitude pruning at
  50 / 80 / 90% (3 rounds, 1 fine-tuning epoch each); structured (channel) pruning at 50%.
- LeNet-300-100 (an MLP with 300 and 100 hidden units): magnitude pruning at 50-95% with fine-tuning.
  Anchor: Han et al. (2015) prune it 12x (92% of the weights) with no loss of accuracy (1.64% error
  before and after; 1.59% for the pruned net).
- Distillation (benchmarks/distillation.py): a CNN teacher, a 2x800 MLP student alone and distilled.
  Anchor: Hinton et al. (2015) report 146 test errors for the student alone and 74 distilled.

    python benchmarks/compression.py                 # ~20 min on 2 CPU cores
    python benchmarks/compression.py --cnn RUN --skip-distillation
    python benchmarks/compression.py --quick         # bundled digits, a smoke test
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import layerwise

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def cnn_config(quick: bool) -> tuple[object, list[str]]:
    if quick:
        return {"name": "digits-cnn", "data": {"source": "builtin", "name": "digits"},
                "model": {"family": "cnn", "channels": [8, 16]}, "train": {"epochs": 2, "progress": False}}, []
    return str(ROOT / "examples" / "mnist.yaml"), [f"data.path={MNIST}", "train.epochs=3", "train.progress=false"]


def lenet_config(quick: bool) -> dict:
    data = ({"source": "builtin", "name": "digits"} if quick else
            {"source": "idx", "path": str(MNIST), "val_fraction": 0.05})
    return {"name": "lenet-300-100", "data": data,
            "model": {"family": "mlp", "hidden": [300, 100], "dropout": 0.0, "batch_norm": False},
            "train": {"epochs": 2 if quick else 12, "batch_size": 128, "optimizer": "adamw", "lr": 1e-3,
                      "weight_decay": 1e-4, "scheduler": "cosine", "seed": 0, "progress": False}}


def row(label: str, result) -> dict:
    values = {r["key"]: r for r in result.table}

    def get(key, which="compressed"):
        return values[key][which] if key in values else None

    return {"model": label, "method": result.method, "run": result.path.name,
            "acc_before": get("metric", "original"), "acc_after": get("metric"),
            "nonzero": get("nonzero_parameters"), "params_before": get("parameters", "original"),
            "size_ratio": values["size_bytes"]["ratio"], "zipped_ratio": values.get("size_zipped_bytes", {}).get("ratio"),
            "b1_ratio": values["latency_b1_ms"]["ratio"], "b64_ratio": values["latency_b64_ms"]["ratio"]}


def table(rows: list[dict]) -> str:
    lines = ["| model | compression | accuracy before | after | non-zero params | x fewer | size | zipped | "
             "latency b1 | latency b64 |", "|" + " --- |" * 10]
    for r in rows:
        fewer = r["params_before"] / r["nonzero"] if r["nonzero"] else float("nan")
        zipped = f"x{r['zipped_ratio']:.2f}" if r["zipped_ratio"] is not None else ""
        lines.append(f"| {r['model']} | {r['method']} | {r['acc_before']:.4f} | {r['acc_after']:.4f} | "
                     f"{r['nonzero']:,} | {fewer:.1f} | x{r['size_ratio']:.2f} | {zipped} | x{r['b1_ratio']:.2f} | "
                     f"x{r['b64_ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cnn", type=Path, help="a trained MNIST CNN run to reuse")
    parser.add_argument("--lenet", type=Path, help="a trained LeNet-300-100 run to reuse")
    parser.add_argument("--runs-dir", default="/tmp/layerwise-bench-compression")
    parser.add_argument("--skip-distillation", action="store_true")
    parser.add_argument("--quick", action="store_true", help="bundled digits, tiny models: a smoke test")
    parser.add_argument("--out", type=Path, help="also write the tables here")
    args = parser.parse_args()
    finetune = 1
    rows = []

    config, overrides = cnn_config(args.quick)
    cnn = layerwise.load_run(args.cnn) if args.cnn else layerwise.train(config, runs_dir=args.runs_dir,
                                                                        overrides=overrides, quiet=True)
    jobs = [dict(quantize="dynamic"), dict(quantize="static"),
            *(dict(prune="magnitude", sparsity=s, iterative=3, finetune_epochs=finetune) for s in (0.5, 0.8, 0.9)),
            dict(prune="structured", sparsity=0.5, iterative=1, finetune_epochs=finetune)]
    for job in jobs:
        rows.append(row("MNIST CNN", cnn.compress(**job, runs_dir=args.runs_dir)))
        print(table(rows[-1:]).splitlines()[-1], flush=True)

    lenet = layerwise.load_run(args.lenet) if args.lenet else layerwise.train(lenet_config(args.quick),
                                                                              runs_dir=args.runs_dir, quiet=True)
    for sparsity in (0.5, 0.8, 0.9, 0.92, 0.95):
        result = lenet.compress(prune="magnitude", sparsity=sparsity, iterative=3, finetune_epochs=2 * finetune,
                                runs_dir=args.runs_dir)
        rows.append(row("LeNet-300-100", result))
        print(table(rows[-1:]).splitlines()[-1], flush=True)

    text = (f"torch {torch.__version__}, {torch.get_num_threads()} threads; ratios are compressed / original "
            "(size: the saved model file; latency: p50)\n\n" + table(rows) +
            "\n\nanchor: Han et al. 2015 prune LeNet-300-100 12x (92% of weights) with no loss of accuracy\n")
    if not args.skip_distillation:
        import distillation

        distill_rows = distillation.main(["--quick"] if args.quick else [])
        text += ("\n| distillation | family | parameters | accuracy | test errors | Hinton et al. 2015 |\n"
                 "| --- | --- | --- | --- | --- | --- |\n")
        text += "".join(f"| {r['role']} | {r['family']} | {r['parameters']:,} | {r['accuracy']:.4f} | {r['errors']} / "
                        f"{r['samples']:,} | {distillation.HINTON[r['role']]} / 10,000 |\n" for r in distill_rows)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
