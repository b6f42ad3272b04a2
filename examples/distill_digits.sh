#!/usr/bin/env bash
# Knowledge distillation (Hinton et al., 2015) on the bundled digits, from the repository root:
# train the CNN of examples/digits.yaml as the teacher, then distil it into the small MLP of
# examples/distill_digits.yaml. `layerwise distill` also trains that MLP alone (same seed) and
# prints teacher, student alone and distilled student side by side; the distilled run's
# report.html has the same table in its "Distillation" section (docs/distillation.md).
set -euo pipefail
RUNS=${RUNS:-runs}

layerwise train examples/digits.yaml --runs-dir "$RUNS" --quiet "$@"
TEACHER=$(ls -d "$RUNS"/digits-cnn-2* | tail -1)
layerwise distill "$TEACHER" examples/distill_digits.yaml --temperature 20 --alpha 0.9 --runs-dir "$RUNS" --quiet
