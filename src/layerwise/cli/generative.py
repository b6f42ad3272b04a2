"""CLI verbs of generative runs: anomaly scores, latent codes and sample quality (each calls a
:class:`~layerwise.runs.Run` method; ``layerwise generate`` lives with the language models' in cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import CONTEXT, metrics_table

__all__ = ["anomaly", "embed", "quality"]


@click.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.argument("inputs", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="scores.csv", show_default=True)
@click.option("--quantile", default=0.99, show_default=True, type=float,
              help="threshold: this quantile of the validation split's scores")
@click.option("--normal", multiple=True, metavar="CLASS", help="a normal class of the input's labels (repeatable; "
              "default: the classes the run trained on)")
@click.option("--labels-column", metavar="C",
              help="a table's boolean column marking anomalies (or its classes with --normal)")
def anomaly(run_dir, inputs, out, quantile, normal, labels_column) -> None:
    """Score INPUT for anomalies (autoencoder / vae runs) into a CSV: score, is_anomaly."""
    from .. import load_run

    result = load_run(run_dir).anomaly(inputs, quantile=quantile, normal=list(normal) or None,
                                       labels_column=labels_column, out=out)
    click.echo(f"threshold: {result.threshold:.6g} (quantile {quantile} of validation scores); "
               f"{int(result.is_anomaly.sum())} of {len(result.scores)} flagged")
    if result.metrics:
        metrics_table("anomaly detection", result.metrics)
    click.echo(f"scores: {result.path}")


@click.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.argument("inputs", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="codes.csv", show_default=True)
def embed(run_dir, inputs, out) -> None:
    """Latent codes of INPUT (autoencoder / vae runs) into a CSV: id, z0, z1, ..."""
    from .. import load_run

    result = load_run(run_dir).embed(inputs, out=out)
    click.echo(f"codes: {result.path} ({result.codes.shape[0]} x {result.codes.shape[1]})")


@click.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--classifier", type=click.Path(file_okay=False, path_type=Path),
              help="a classifier run of the same data (default: train one into RUN/quality/)")
@click.option("--n", default=2000, show_default=True, type=click.IntRange(min=10), help="samples scored")
@click.option("--tstr-n", type=click.IntRange(min=2), help="generated training samples of train-on-synthetic "
              "(default: --n)")
@click.option("--no-tstr", is_flag=True, help="skip train-on-synthetic / test-on-real (two training runs)")
@click.option("--steps", type=click.IntRange(min=1), help="diffusion: DDIM sampling steps")
@click.option("--guidance", default=0.0, show_default=True, type=float, help="diffusion: classifier-free guidance")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def quality(run_dir, classifier, n, tstr_n, no_tstr, steps, guidance, seed, as_json) -> None:
    """Sample quality of a vae / gan / diffusion RUN: Fréchet distance, per-class accuracy, train on synthetic."""
    from .. import load_run

    result = load_run(run_dir).quality(classifier, n=n, tstr=not no_tstr, tstr_n=tstr_n, steps=steps,
                                       guidance=guidance, seed=seed)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    rows = {"frechet_distance": result.frechet_distance, "frechet_real_floor": result.frechet_real}
    if result.per_class_accuracy:
        rows["per_class_accuracy_mean"] = result.per_class_accuracy["mean"]
    if result.tstr:
        rows["tstr_synthetic_accuracy"] = result.tstr["synthetic_accuracy"]
        rows["tstr_real_accuracy"] = result.tstr["real_accuracy"]
    metrics_table(f"sample quality ({result.samples} samples)", rows)
    click.echo(f"classifier: {result.classifier}")
    click.echo(f"report:     {Path(result.run) / 'report.html'}")
