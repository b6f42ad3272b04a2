"""The embedded default experiment: a small CNN on scikit-learn's bundled 8x8 digits.

It needs no files and no download, trains in seconds on a laptop CPU, and is what
``layerwise train`` runs when no config is given.
"""

from __future__ import annotations

from typing import Any

DEFAULT_CONFIG = """\
name: digits-cnn
data: {source: builtin, name: digits, val_fraction: 0.1, test_fraction: 0.2}
model: {family: cnn, channels: [32, 64], dropout: 0.2}
train: {epochs: 15, batch_size: 64, optimizer: adamw, lr: 0.003, weight_decay: 0.0001,
        scheduler: onecycle, seed: 0}
"""


def default_config_dict() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(DEFAULT_CONFIG)
