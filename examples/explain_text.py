"""Explain text classifiers: per-token attributions, attention maps and attention rollout.

    python examples/explain_text.py            # from the repository root; a minute or two on a laptop CPU
    python examples/explain_text.py --quick    # fewer epochs and samples, for a smoke test

1. The play-lines transformer of ``examples/text_classification.yaml`` (which Shakespeare play is a
   line from?), explained with every method: each token of each line highlighted red (pushes towards
   the explained play) or blue (against it), one row per method, in ``explain/tokens.html``; the
   attention of every layer and head (``attention_layers.png``) and the attention rollout of the
   prediction (``attention_rollout.png``); the trust table.
2. The same task with a recurrent minLSTM (``examples/text_minlstm.yaml``): the same token
   highlighting through its embeddings (no attention: it has none).

The same from the command line: ``layerwise explain RUN [--method M ...] [--samples N]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import layerwise

RUNS = Path("runs")
quick = "--quick" in sys.argv
samples = 4 if quick else 8

# 1. the transformer: every method, attention included
plays = layerwise.train("examples/text_classification.yaml", runs_dir=RUNS, quiet=True,
                        train__epochs=3 if quick else 25)
print(f"transformer run {plays.path}: test accuracy {plays.metrics['metrics']['accuracy']:.3f}")
result = plays.explain(samples=samples)
print(f"{'method':22} {'deletion':>9} {'random':>8} {'insertion':>10} {'random':>8} {'spearman':>9}")
for method, scores in result.trust.items():
    print(f"{method:22} {scores['deletion_auc']:9.3f} {scores['random_deletion_auc']:8.3f} "
          f"{scores['insertion_auc']:10.3f} {scores['random_insertion_auc']:8.3f} "
          f"{scores['randomisation_spearman']:9.3f}")

# the tokens that weigh most in the first line, by integrated gradients and by attention rollout
tokens = result.summary["tokens"][0]  # the line's tokens, padding left out
print(f"line 0, predicted {result.predictions[0]}, true {result.labels[0]}: {''.join(tokens)!r}")
for method in ("integrated_gradients", "attention_rollout"):
    scores = result.attributions[method][0][-len(tokens):]  # lines are left-padded: the tokens come last
    top = np.argsort(-scores)[:3]
    print(f"  {method:20} " + ", ".join(f"{tokens[i]!r} {scores[i]:+.3f}" for i in top))
print("open:", *(Path(result.path) / f for f in result.files))

# 2. a recurrent model: the same highlighting, explained through its token embeddings
minlstm = layerwise.train("examples/text_minlstm.yaml", runs_dir=RUNS, quiet=True, train__epochs=3 if quick else 25)
rnn = minlstm.explain(methods=["integrated_gradients", "occlusion"], samples=samples)
print(f"minlstm run {minlstm.path}: test accuracy {minlstm.metrics['metrics']['accuracy']:.3f}; "
      f"integrated gradients deletion AUC {rnn.trust['integrated_gradients']['deletion_auc']:.3f} "
      f"(random {rnn.trust['integrated_gradients']['random_deletion_auc']:.3f})")
print("open:", Path(rnn.path) / "tokens.html")
