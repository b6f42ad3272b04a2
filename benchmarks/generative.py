"""Generative models on MNIST within a CPU budget per model: VAE likelihood, GAN and diffusion sample
quality, and train-on-synthetic / test-on-real for each.

- VAE (examples/vae_mnist.yaml) on stochastically binarised MNIST: test ELBO and the importance-
  weighted bound of Burda et al. 2016 in nats. Anchors: a fully connected VAE reaches about 87 nats
  and an IWAE about 85 (Burda et al., 5,000 importance samples); the goal here is <= 90 nats.
- GAN and diffusion (examples/gan_mnist.yaml, examples/diffusion_mnist.yaml), both class-conditional:
  the scoring classifier's (examples/mnist.yaml) accuracy on generated samples of each class and the
  Fréchet distance in its penultimate features (not Inception FID; the real-vs-real floor is printed).
- All three: a copy of the classifier's config trained only on generated samples and scored on the
  real test set, beside the same config trained on as many real images (layerwise.tools.quality).

    python benchmarks/generative.py                      # full: ~10 min of training per model
    python benchmarks/generative.py --only vae --budget 120
    python benchmarks/generative.py --quick              # smoke test: 6,000 images, 20 s budgets

Sample grids go to --grids (default docs/images/): <family>_mnist.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import layerwise
from layerwise.runs.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
ANCHORS = {"vae": 87.0, "iwae": 85.0, "goal": 90.0}
FAMILIES = ("vae", "gan", "diffusion")


def _config(name: str, args, **train: Any) -> dict[str, Any]:
    cfg = load_config(ROOT / "examples" / name).to_dict()
    cfg["data"]["path"] = str(args.data)
    if args.quick:
        cfg["data"]["limit"] = 6000
    cfg["train"].update(progress=False, **train)
    return cfg


def _vae_bounds(run, k: int, images: int) -> dict[str, float]:
    """The importance-weighted bound with ``k`` samples on the first ``images`` test images (the vae
    task's own final metric, with another K on fewer images)."""
    from layerwise.data.loader import BatchLoader
    from layerwise.data.spec import Split

    test = run.data.test
    loader = BatchLoader(Split(test.x[:images], test.y[:images]), 50, transform=run.preprocessing.inputs.batch)
    options = run.task.config.model_copy(update={"importance_samples": k})
    task = type(run.task)(run.spec, run.config.train, run.preprocessing, config=options)
    with torch.no_grad():
        bound = task.final_metrics(run.model.cpu().eval(), loader, run.config.evaluate)["iw_nll"]
    return {f"iw_nll_k{k}_first{images}": bound}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6,000 training images, 20 s budgets, few samples")
    parser.add_argument("--only", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--data", default=str(MNIST), help="folder of MNIST IDX files")
    parser.add_argument("--budget", type=float, help="training seconds per generative model (default 540)")
    parser.add_argument("--classifier", help="a trained MNIST classifier run to score with (default: train "
                                             "examples/mnist.yaml)")
    parser.add_argument("--n", type=int, help="samples scored per model (default 5000)")
    parser.add_argument("--tstr-n", type=int, help="generated training samples for train-on-synthetic (default 10000)")
    parser.add_argument("--guidance", type=float, default=1.0, help="diffusion: classifier-free guidance weight")
    parser.add_argument("--steps", type=int, default=25, help="diffusion: DDIM steps")
    parser.add_argument("--iw-k", type=int, default=5000, help="VAE: importance samples of the anchor's bound")
    parser.add_argument("--iw-images", type=int, default=1000, help="VAE: test images scored with --iw-k")
    parser.add_argument("--reuse", nargs="+", default=[], metavar="FAMILY=RUN",
                        help="score an already trained run instead of training one, "
                             "e.g. diffusion=runs/mnist-diffusion-...")
    parser.add_argument("--runs-dir", help="where the runs go (default: a temporary folder)")
    parser.add_argument("--grids", default=str(ROOT / "docs" / "images"), help="folder for the sample grids")
    args = parser.parse_args(argv)
    budget = args.budget or (20.0 if args.quick else 540.0)
    n = args.n or (500 if args.quick else 5000)
    tstr_n = args.tstr_n or (1000 if args.quick else 10000)
    reuse = dict(item.split("=", 1) for item in args.reuse)
    if args.quick:
        args.iw_k, args.iw_images = min(args.iw_k, 100), min(args.iw_images, 200)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(args.runs_dir or tmp)
        started = time.perf_counter()
        if args.classifier:
            clf = layerwise.load_run(args.classifier)
        else:
            clf = layerwise.train(_config("mnist.yaml", args, **({"epochs": 1} if args.quick else {})),
                                  runs_dir=runs_dir, quiet=True)
        print(f"classifier {clf.path}: test accuracy {clf.metrics['metrics']['accuracy']:.4f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        for family in args.only:
            t0 = time.perf_counter()
            if family in reuse:
                run = layerwise.load_run(reuse[family])
            else:
                run = layerwise.train(_config(f"{family}_mnist.yaml", args, max_time=budget), runs_dir=runs_dir,
                                      quiet=True)
            training = run.metrics["training"]
            row: dict[str, Any] = {"family": family, "run": str(run.path), "train_s": training["duration_s"],
                                   "epochs": training["epochs_run"], "parameters": training["parameters"]}
            if family == "vae":
                m = run.metrics["metrics"]
                row.update(elbo=m["elbo"], recon=m["recon"], kl=m["kl"], iw_nll=m.get("iw_nll"),
                           iw_samples=m.get("iw_samples"))
                row.update(_vae_bounds(run, args.iw_k, args.iw_images))
            guidance = args.guidance if family == "diffusion" else 0.0
            steps = args.steps if family == "diffusion" else None
            q = run.quality(clf, n=n, tstr_n=tstr_n, steps=steps, guidance=guidance)
            row.update(frechet_distance=q.frechet_distance, frechet_real=q.frechet_real,
                       per_class_mean=(q.per_class_accuracy or {}).get("mean"), per_class=q.per_class_accuracy,
                       class_shares=q.class_shares, tstr_synthetic=q.tstr["synthetic_accuracy"],
                       tstr_real=q.tstr["real_accuracy"], tstr_samples=q.tstr["samples"],
                       classifier_accuracy=q.tstr["classifier_accuracy"], wall_s=time.perf_counter() - t0)
            grids = Path(args.grids)
            grids.mkdir(parents=True, exist_ok=True)
            if not args.quick:
                shutil.copy(run.path / "quality" / "samples.png", grids / f"{family}_mnist.png")
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("per_class", "class_shares")}), flush=True)
    _print(rows)
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    print("\n| model | training | FD (real floor) | per-class acc | TSTR synthetic / real |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        per = "—" if r["per_class_mean"] is None else f"{r['per_class_mean']:.3f}"
        print(f"| {r['family']} | {r['train_s']:.0f} s, {r['epochs']} epochs | {r['frechet_distance']:.2f} "
              f"({r['frechet_real']:.2f}) | {per} | {r['tstr_synthetic']:.4f} / {r['tstr_real']:.4f} "
              f"({r['tstr_samples']} samples) |")
    for r in rows:
        if r["family"] == "vae":
            extra = {k: round(v, 2) for k, v in r.items() if k.startswith("iw_nll_k")}
            print(f"\nVAE test ELBO {r['elbo']:.2f} nats (recon {r['recon']:.2f}, KL {r['kl']:.2f}); "
                  f"IW bound K={r['iw_samples']} {r['iw_nll']:.2f} nats; {extra}; anchors: VAE ~{ANCHORS['vae']}, "
                  f"IWAE ~{ANCHORS['iwae']}, goal <= {ANCHORS['goal']}")


if __name__ == "__main__":
    main()
