#!/usr/bin/env bash
# Compression on the bundled digits, from the repository root: train the CNN of examples/digits.yaml,
# then write four compressed runs beside it, each with a table of parameters, size on disk, latency
# at batch 1 and 64, test accuracy and energy per 1,000 predictions against the original
# (docs/compression.md): dynamic int8, static int8 (PT2E, calibrated on 8 training batches),
# 80% global magnitude pruning in 2 rounds with a fine-tuning epoch after each, and 50% of the
# channels removed for real (structured pruning, torch-pruning), fine-tuned the same way.
# Extra arguments go to `layerwise train`, e.g. `bash examples/compress_digits.sh --set train.epochs=1`.
set -euo pipefail
RUNS=${RUNS:-runs}

RUN=$(layerwise train examples/digits.yaml --runs-dir "$RUNS" --quiet "$@" | sed -n 's/^run: *//p')
echo "original: $RUN"
layerwise compress "$RUN" --quantize dynamic
layerwise compress "$RUN" --quantize static --calibration-batches 8
layerwise compress "$RUN" --prune magnitude --sparsity 0.8 --iterative 2 --finetune-epochs 1
layerwise compress "$RUN" --prune structured --sparsity 0.5 --iterative 2 --finetune-epochs 1
