"""The command line: a thin layer over the Python API (every verb calls a public function).

Errors a user can cause print one line and exit with code 2; ``--debug`` anywhere on the command
line shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .errors import LayerwiseError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _console():
    from rich.console import Console

    return Console()


def _metrics_table(title: str, metrics: dict) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    _console().print(table)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="layerwise", message="layerwise %(version)s")
def cli() -> None:
    """layerwise: train, evaluate and use deep-learning models from a YAML file.

    Add --debug anywhere to see full tracebacks.
    """


set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="override a config key, e.g. --set train.epochs=3 (repeatable)")


@cli.command(context_settings=CONTEXT)
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), help="continue an interrupted run")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--quiet", is_flag=True, help="no progress output")
def train(config, overrides, resume, runs_dir, quiet) -> None:
    """Train CONFIG (default: a CNN on the bundled digits) into runs/NAME-TIMESTAMP/."""
    from . import runs

    if resume is not None and config is not None:
        raise click.UsageError("give either CONFIG or --resume RUN, not both (a resumed run keeps its config)")
    run = runs.train(config, resume=resume, runs_dir=runs_dir, quiet=quiet, overrides=overrides)
    metrics = run.metrics
    _metrics_table(f"{run.config.name}: {metrics['split']} metrics", metrics["metrics"])
    click.echo(f"run:    {run.path}")
    click.echo(f"report: {run.path / 'report.html'}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), help="a labelled file or folder to score instead")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON")
def evaluate(run_dir, data, split, as_json) -> None:
    """Score a trained RUN on its test split or on other labelled data."""
    from . import load_run

    result = load_run(run_dir).evaluate(data=data, split=split)
    if as_json:
        click.echo(json.dumps({"metrics": dict(result), "details": result.details}, indent=2))
    else:
        _metrics_table(f"{run_dir}: {'data ' + str(data) if data else split}", dict(result))


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.argument("inputs", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="predictions.csv", show_default=True)
def predict(run_dir, inputs, out) -> None:
    """Predict for INPUT (CSV, Parquet, NPZ, an image or a folder of images) into a CSV."""
    from . import load_run

    run = load_run(run_dir)
    path = run.predict_to_csv(inputs, out)
    click.echo(f"predictions: {path}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="onnx", show_default=True, help="onnx, torchscript or exported-program")
@click.option("--opset", type=click.IntRange(min=7), help="ONNX opset version (default: the exporter's)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="file to write (default: RUN/export/)")
def export(run_dir, fmt, opset, out) -> None:
    """Export a trained RUN (dynamic batch), verified against PyTorch on its own test inputs."""
    from . import load_run

    result = load_run(run_dir).export(fmt, out=out, opset=opset)
    click.echo(f"{result.format}: {result.path}")
    click.echo(f"max abs diff vs PyTorch (batch {' and '.join(map(str, result.batches))}): {result.max_abs_diff:.3g}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--prompt", default="", help="text to continue (default: start from nothing)")
@click.option("--tokens", default=200, show_default=True, type=click.IntRange(min=1), help="tokens to generate")
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(min=0.0),
              help="sampling temperature; 0 picks the most likely token every time")
@click.option("--top-k", type=click.IntRange(min=1), help="sample among the K most likely tokens only")
@click.option("--seed", default=0, show_default=True, type=int, help="random seed (same seed, same text)")
def generate(run_dir, prompt, tokens, temperature, top_k, seed) -> None:
    """Generate text from a trained language-model RUN."""
    from . import load_run

    click.echo(load_run(run_dir).generate(prompt, tokens, temperature=temperature, top_k=top_k, seed=seed))


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--input", "inputs", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="a CSV with the recent history: the run's time column and value columns")
@click.option("--horizon", type=click.IntRange(min=1), help="steps to forecast (default: the run's horizon)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="forecast.csv", show_default=True,
              help="where to write the forecast; a plot is written beside it (.png)")
def forecast(run_dir, inputs, horizon, out) -> None:
    """Forecast the next steps after the history in --input with a trained forecasting RUN."""
    from . import load_run
    from .forecasting import write_forecast

    csv_path, plot_path = write_forecast(load_run(run_dir), inputs, horizon, out)
    click.echo(f"forecast: {csv_path}")
    click.echo(f"plot:     {plot_path}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--method", default="pgd", show_default=True, help="fgsm or pgd")
@click.option("--eps", "eps", multiple=True, type=float,
              help="attack strength (repeatable; images: pixel units in [0, 1])")
@click.option("--steps", default=10, show_default=True, type=int, help="PGD steps")
@click.option("--norm", default="linf", show_default=True, help="linf or l2")
@click.option("--targeted", "target", help="push predictions towards this class instead of away from the truth")
@click.option("--samples", default=500, show_default=True, type=int, help="examples of the split to attack")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
def attack(run_dir, method, eps, steps, norm, target, samples, split) -> None:
    """Attack a trained classification RUN with FGSM or PGD: accuracy at each eps, into RUN/attack/."""
    from . import load_run

    result = load_run(run_dir).attack(method, list(eps) or None, steps, norm, split, samples, target)
    rows = {f"eps={e:g}": a for e, a in zip(result.eps, result.accuracy)}
    _metrics_table(f"{run_dir}: accuracy under {method} ({norm}, {result.samples} {split} samples)", rows)
    if result.target_rate is not None:
        _metrics_table(f"predicted as target class {result.target_class}",
                       {f"eps={e:g}": r for e, r in zip(result.eps, result.target_rate)})
    click.echo(f"results: {Path(result.path) / 'attack.json'}")


@cli.command(context_settings=CONTEXT)
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--folds", default=5, show_default=True, type=int, help="number of folds")
@set_option
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path))
def cv(config, folds, overrides, runs_dir) -> None:
    """Stratified k-fold cross-validation of CONFIG: mean ± std of each metric."""
    from rich.table import Table

    from . import cross_validate

    result = cross_validate(config, folds, overrides=list(overrides), quiet=False, out_dir=runs_dir)
    table = Table(title=f"{folds}-fold cross-validation", header_style="bold")
    for col in ("metric", "mean", "std"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, mean, std in result.summary():
        table.add_row(key, f"{mean:.4f}", f"± {std:.4f}")
    _console().print(table)
    click.echo(f"results: {Path(result['path']) / 'cv.json'}")


@cli.group(context_settings=CONTEXT, invoke_without_command=True)
@click.pass_context
def models(ctx) -> None:
    """List model families, their inputs and hyperparameters (or `models show CONFIG`)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from .models import FAMILIES, describe_family

    table = Table(title="model families", header_style="bold", show_lines=True)
    for col in ("family", "accepts", "hyperparameters (default)", "summary"):
        table.add_column(col)
    for name in FAMILIES:
        info = describe_family(name)
        params = "\n".join(f"{k} ({'required' if v['required'] else v['default']})" for k, v in info["params"].items())
        table.add_row(name, ", ".join(info["accepts"]) or "any", params, info["summary"])
    _console().print(table)


@models.command("show", context_settings=CONTEXT)
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@set_option
def models_show(config, overrides) -> None:
    """Build CONFIG's model and print its layers, output shapes and parameter counts."""
    from rich.table import Table

    from .config import load_config
    from .models.summary import summarize
    from .runs import prepare

    prepared = prepare(load_config(config, list(overrides)))
    rows = summarize(prepared.model, prepared.bundle.spec.example_input(1))
    table = Table(title=f"{prepared.config.model.family} for {prepared.bundle.spec.kind} input "
                        f"{tuple(prepared.bundle.spec.input_shape)}", header_style="bold")
    for col in ("layer", "type", "output shape", "parameters"):
        table.add_column(col, justify="right" if col == "parameters" else "left")
    for row in rows:
        table.add_row(row.name, row.kind, str(row.output_shape), f"{row.parameters:,}")
    total = sum(p.numel() for p in prepared.model.parameters())
    trainable = sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)
    table.add_section()
    table.add_row("total", "", "", f"{total:,}")
    table.add_row("trainable", "", "", f"{trainable:,}")
    _console().print(table)


@cli.command(context_settings=CONTEXT)
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--reference", is_flag=True, help="print the configuration reference (Markdown) instead")
def config(config, overrides, reference) -> None:
    """Validate CONFIG and print it fully resolved (every default filled in)."""
    from .config import load_config

    if reference:
        from ._reference import config_reference

        click.echo(config_reference(), nl=False)
        return
    click.echo(load_config(config, list(overrides)).to_yaml(), nl=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors with exit code 2, tracebacks only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("LAYERWISE_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        cli.main(args=args, prog_name="layerwise", standalone_mode=False)
    except LayerwiseError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        hint = "; continue a training run with `layerwise train --resume RUN`" if args[:1] == ["train"] else ""
        click.echo(f"interrupted{hint}", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0
