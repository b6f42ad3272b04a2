"""Add a post-training verb: one file declaring its options and one function ``run(run, options)``.

The declaration is all there is: ``layerwise sparsity RUN --threshold 0.01`` (its ``--help`` comes
from the field descriptions), ``run.sparsity(threshold=0.01)`` and the row in ``layerwise tools``
are derived from it. Put the file in ``layerwise/tools/`` (or in a plugin package) and it is found
by importing the package.

    python examples/extending/tool.py [--runs-dir DIR]
"""

from __future__ import annotations

import argparse

import layerwise
from layerwise import ToolOptions, option, register_tool


class SparsityOptions(ToolOptions):
    threshold: float = option(1e-2, "weights with a smaller magnitude count as zero", gt=0)


@register_tool("sparsity", SparsityOptions)
def sparsity(run, options: SparsityOptions) -> float:
    """Share of a RUN's weights below a magnitude threshold (how much magnitude pruning could remove)."""
    weights = [p.detach().abs().flatten() for p in run.model.parameters() if p.dim() > 1]
    small = sum(int((w < options.threshold).sum()) for w in weights)
    return small / max(sum(w.numel() for w in weights), 1)


@sparsity.printer
def _print(share: float, options: SparsityOptions) -> None:
    print(f"{share:.1%} of the weights are below {options.threshold:g}")


def main(runs_dir: str) -> float:
    run = layerwise.train({"name": "iris-mlp", "data": {"source": "builtin", "name": "iris"},
                           "model": {"family": "mlp", "hidden": [16]}, "train": {"epochs": 5}},
                          runs_dir=runs_dir, quiet=True)
    share = run.sparsity(threshold=0.05)  # the Python entry point, derived from the declaration
    print(f"sparsity below 0.05: {share:.3f}")
    return share


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs-dir", default="runs")
    assert 0 <= main(parser.parse_args().runs_dir) <= 1
