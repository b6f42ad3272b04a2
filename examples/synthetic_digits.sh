#!/usr/bin/env bash
# Synthetic data from a conditional GAN on the bundled digits: train the GAN and a classifier of the
# same data, measure the samples (Fréchet distance, per-class accuracy, train on synthetic / test on
# real), then train a classifier on generated digits only. A few minutes on a laptop CPU.
#   bash examples/synthetic_digits.sh
# See docs/synthetic-data.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}

run_dir() { ls -dt "$RUNS"/"$1"-* | head -1; }

layerwise train examples/gan_digits.yaml --runs-dir "$RUNS" --quiet
layerwise train examples/digits.yaml --runs-dir "$RUNS" --quiet
GAN=$(run_dir digits-gan)
CLF=$(run_dir digits-cnn)

# quality: FD in the classifier's features, per-class accuracy, and train-on-synthetic next to real
layerwise quality "$GAN" --classifier "$CLF" --n 1000 --tstr-n 2000

# the same as a data source: 3,000 generated digits, tested on the GAN's real test split
layerwise train examples/digits_synthetic.yaml --runs-dir "$RUNS" --quiet --set data.run="$GAN"
echo "report: $GAN/report.html"
