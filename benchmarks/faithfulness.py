"""How far to trust each explanation method: faithfulness on MNIST and on a tabular set.

For every method of ``layerwise.tools.explain.methods.METHODS`` (through ``methods.attribute``, as
``layerwise explain`` calls it) and a model trained here with ``layerwise.train``:

- deletion and insertion AUC (Petsiuk et al. 2018) of the predicted class's softmax probability,
  against the same curves for random rankings (``layerwise.tools.explain.trust``; deletion: lower is
  better, insertion: higher is better);
- Captum's infidelity and max-sensitivity (Yeh et al. 2019; lower is better);
- the model-randomisation check (Adebayo et al. 2018): Spearman correlation of |attributions| for
  the trained and a re-initialised model; below 0.5 the explanation passes.

Data and models:
- MNIST from ``../shared/data/mnist`` (the ``idx`` source, as examples/mnist.yaml): the example's
  CNN trained on the first ``--train-images`` images for at most ``--train-seconds`` seconds
  (``train.max_time``); explained in pixel space [0, 1] with the run's normalisation inside the
  forward, black (0) as the removed value, pixels removed one by one in ``--steps`` chunks; the
  perturbation methods switch 4x4 patches (as ``layerwise explain`` does);
- breast_cancer (scikit-learn's builtin, 30 numeric columns): benchmarks/tabular.py's small MLP;
  all test rows; removed value 0 in the standardised space (the training mean), one feature per
  column (one-hot levels of a column would be removed together).

    python benchmarks/faithfulness.py --out faithfulness.md       # 100 images, full test split
    python benchmarks/faithfulness.py --quick                     # tiny sizes: ~20 s of CPU time
    python benchmarks/faithfulness.py --only tabular --methods saliency integrated_gradients
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

import layerwise
from layerwise.tools.explain import trust
from layerwise.tools.explain.images import patch_mask, patch_size
from layerwise.tools.explain.methods import METHODS, attribute, samples_for
from layerwise.tools.explain.tabular import columns

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / ".." / "shared" / "data" / "mnist"
COLUMNS = [("deletion_auc", "deletion AUC ↓"), ("random_deletion_auc", "random"), ("insertion_auc", "insertion AUC ↑"),
           ("random_insertion_auc", "random"), ("infidelity", "infidelity ↓"), ("sensitivity", "sensitivity ↓"),
           ("randomisation_spearman", "randomisation ρ ↓")]


class Cached:
    """An explain function that remembers its answer for the explained batch (assess asks for it,
    the curve plot asks again); other inputs (Captum's perturbations) are explained afresh."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.fn, self.key, self.value = fn, None, None

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.key is not None and self.key.shape == x.shape and torch.equal(self.key, x):
            return self.value
        value = self.fn(x, target)
        if self.key is None:
            self.key, self.value = x.detach().clone(), value
        return value


def image_forward(net: torch.nn.Module, normalize, device: torch.device):
    net = net.to(device).eval()
    return lambda z: net(normalize(z))


def mnist_setup(args, device: torch.device) -> dict:
    overrides = [f"data.path={MNIST}", f"data.limit={args.train_images}", "data.val_fraction=0.05",
                 f"train.epochs={args.epochs}", f"train.max_time={args.train_seconds}", f"train.device={args.device}",
                 "train.progress=false", "evaluate.batch_size=1000"]
    run = layerwise.train(str(ROOT / "examples" / "mnist.yaml"), runs_dir=args.runs_dir, overrides=overrides,
                          quiet=True)
    split = run.data.test
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(args.seed))[:args.samples]
    x = (split.x[pick].float() / 255).to(device)  # pixels in [0, 1]; the forward normalises
    normalize = run.preprocessing.inputs.normalize_pixels
    p = patch_size(tuple(x.shape[1:]))
    return {"title": f"MNIST CNN ({run.metrics['metrics']['accuracy']:.4f} test accuracy, {len(x)} test images)",
            "run": run, "x": x, "baseline": 0.0, "groups": None, "mask": patch_mask(tuple(x.shape[1:])),
            "window": (x.shape[1], p, p),
            "forward_for": lambda net: image_forward(net, normalize, device)}


def tabular_setup(args, device: torch.device) -> dict:
    config = {"name": "faithfulness-tabular",
              "data": {"source": "builtin", "name": "breast_cancer", "test_fraction": 0.25, "val_fraction": 0.0},
              "model": {"family": "mlp", "hidden": [8], "dropout": 0.0},
              "train": {"epochs": args.tabular_epochs, "batch_size": 64, "optimizer": "adamw", "lr": 0.003,
                        "weight_decay": 0.05, "scheduler": "cosine", "progress": False, "seed": args.seed,
                        "device": args.device}}
    run = layerwise.train(config, runs_dir=args.runs_dir, quiet=True)
    x = run.preprocessing.inputs.batch(run.data.test.x).float()
    rows = len(x) if args.tabular_samples is None else min(args.tabular_samples, len(x))
    x = x[:rows].to(device)
    _names, ids = columns(run)
    return {"title": f"breast_cancer MLP ({run.metrics['metrics']['accuracy']:.4f} test accuracy, {len(x)} test rows)",
            "run": run, "x": x, "baseline": 0.0, "groups": ids.to(device), "mask": ids, "window": (1,),
            "forward_for": lambda net: net.to(device).eval()}


def evaluate(setup: dict, methods: list[str], args) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per method: assess's numbers plus seconds; and the curves for the plot."""
    run, x = setup["run"], setup["x"]
    model = run.model
    forward = setup["forward_for"](model)
    with torch.no_grad():
        target = forward(x).argmax(1)  # explain the predicted class
    scores, curves = {}, {}
    for method in methods:
        def explain_for(net, method=method):
            fwd = setup["forward_for"](net)
            return lambda z, t: attribute(method, fwd, z, t, baseline=setup["baseline"], feature_mask=setup["mask"],
                                          samples=samples_for(method), seed=args.seed, window=setup["window"])

        explain = Cached(explain_for(model))
        start = time.perf_counter()
        scores[method] = trust.assess(forward, explain, x, target, baseline=setup["baseline"], model=model,
                                      explain_for=explain_for, groups=setup["groups"], steps=args.steps,
                                      seed=args.seed)
        scores[method]["seconds"] = time.perf_counter() - start
        curves[method] = trust.deletion_insertion(forward, x, explain(x, target), target, setup["baseline"],
                                                  args.steps, setup["groups"], args.seed)
        print(f"  {method}: {scores[method]['seconds']:.1f} s", flush=True)
    curves["random"] = trust.random_curves(forward, x, target, setup["baseline"], args.steps, setup["groups"],
                                           args.seed)  # the same rankings as assess's random baseline
    return scores, curves


def table(title: str, scores: dict[str, dict]) -> str:
    head = "| method | " + " | ".join(name for _, name in COLUMNS) + " | sanity check | seconds |"
    lines = [f"### {title}", "", head, "|" + "---|" * (len(COLUMNS) + 3)]
    for method, s in scores.items():
        cells = [f"{s[key]:.4g}" if key in s else "–" for key, _ in COLUMNS]
        rho = s.get("randomisation_spearman")
        check = "–" if rho is None else ("pass" if rho < trust.RANDOMISATION_PASS else "FAIL")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {check} | {s['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test (~20 s of CPU time), not a measurement")
    parser.add_argument("--samples", type=int, default=None, help="MNIST test images explained (default 100)")
    parser.add_argument("--tabular-samples", type=int, default=None, help="tabular test rows (default: all)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=None, help="chunks of the deletion/insertion curves (default 20)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (training and explaining)")
    parser.add_argument("--only", choices=("mnist", "tabular"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", default="/tmp/layerwise-bench-faithfulness")
    parser.add_argument("--out", default=None, help="write the tables as markdown here (and the curves as PNGs beside)")
    args = parser.parse_args()
    quick = args.quick
    args.samples = args.samples or (4 if quick else 100)
    args.tabular_samples = args.tabular_samples or (8 if quick else None)
    args.steps = args.steps or (8 if quick else 20)
    args.train_images = 1000 if quick else 12000
    args.epochs, args.train_seconds = (1, 5) if quick else (2, 120)
    args.tabular_epochs = 10 if quick else 60
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    parts = []
    setups = {"mnist": mnist_setup, "tabular": tabular_setup}
    for name, setup_fn in setups.items():
        if args.only not in (None, name):
            continue
        start = time.perf_counter()
        setup = setup_fn(args, device)
        print(f"{setup['title']}: trained in {time.perf_counter() - start:.0f} s", flush=True)
        scores, curves = evaluate(setup, args.methods, args)
        text = table(setup["title"], scores)
        print(text, flush=True)
        parts.append(text)
        if args.out:
            png = Path(args.out).with_name(f"{Path(args.out).stem}_{name}_curves.png")
            trust.plot_curves(curves, png, title=setup["title"])
            parts.append(f"\n![deletion and insertion curves]({png.name})\n")
    header = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
              f"steps {args.steps}, seed {args.seed}{', --quick' if quick else ''}. Infidelity and sensitivity: "
              f"lower is better; randomisation ρ < {trust.RANDOMISATION_PASS} passes the sanity check.")
    if args.out:
        Path(args.out).write_text("## Faithfulness of explanations\n\n" + header + "\n\n" + "\n\n".join(parts) + "\n")
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
