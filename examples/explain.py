"""Explain a trained run: attributions through Captum, pictures, and how far to trust each method.

    python examples/explain.py            # from the repository root; about 20 s on a laptop CPU
    python examples/explain.py --quick    # fewer epochs and samples, for a smoke test

1. A CNN on the bundled 8x8 digits, trained briefly, explained with every image method: heat-map
   overlays (``explain/overlays.png``) and the trust table (deletion/insertion AUC against random
   rankings, infidelity, sensitivity, the model-randomisation check).
2. The churn MLP of ``examples/csv.yaml``: signed attributions per customer by column name and
   value, and global importance next to scikit-learn's permutation importance.

The same from the command line: ``layerwise explain RUN [--method M ...] [--samples N] [--target CLASS]``.
Everything lands in ``RUN/explain/`` and in the "Explanations" section of ``RUN/report.html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import layerwise

RUNS = Path("runs")
quick = "--quick" in sys.argv

# 1. digits: train a few epochs (no augmentation, so the model sees the digits as they are)
digits = layerwise.train("examples/digits.yaml", runs_dir=RUNS, quiet=True, train__epochs=2 if quick else 8,
                         overrides=["data.augment=null"])
print(f"digits run {digits.path}: test accuracy {digits.metrics['metrics']['accuracy']:.3f}")
result = digits.explain(samples=4 if quick else 8)  # every method that fits an image run
print(f"{'method':22} {'deletion':>9} {'random':>8} {'insertion':>10} {'random':>8} {'spearman':>9}")
for method, scores in result.trust.items():
    print(f"{method:22} {scores['deletion_auc']:9.3f} {scores['random_deletion_auc']:8.3f} "
          f"{scores['insertion_auc']:10.3f} {scores['random_insertion_auc']:8.3f} "
          f"{scores['randomisation_spearman']:9.3f}")
print("overlays:", Path(result.path) / "overlays.png")

# explain a chosen class instead of the predicted one: where does each image look like a 3?
as_three = digits.explain(methods=["integrated_gradients"], samples=4, target="3", trust=False,
                          out_dir=digits.path / "explain-as-3")
print("explained as '3':", as_three.targets, "predicted:", as_three.predictions)

# 2. the churn table: attributions per original column (one-hot levels summed back to their column)
churn = layerwise.train("examples/csv.yaml", runs_dir=RUNS, quiet=True, train__epochs=5 if quick else 20)
table = churn.explain(methods=["integrated_gradients", "kernel_shap"], samples=4)
summary = table.summary
order = sorted(range(len(summary["columns"])), key=lambda c: -summary["permutation_importance"]["mean"][c])
print("column            mean |IG|   permutation")
for c in order:
    print(f"{summary['columns'][c]:16} {summary['global_importance']['integrated_gradients'][c]:9.3f} "
          f"{summary['permutation_importance']['mean'][c]:13.3f}")
print("charts:", *(Path(table.path) / f for f in table.files))
