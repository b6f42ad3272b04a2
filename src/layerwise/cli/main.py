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

from ..core.errors import LayerwiseError
from .common import CONTEXT, console, metrics_table


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
    from .. import runs

    if resume is not None and config is not None:
        raise click.UsageError("give either CONFIG or --resume RUN, not both (a resumed run keeps its config)")
    run = runs.train(config, resume=resume, runs_dir=runs_dir, quiet=quiet, overrides=overrides)
    metrics = run.metrics
    metrics_table(f"{run.config.name}: {metrics['split']} metrics", metrics["metrics"])
    click.echo(f"run:    {run.path}")
    click.echo(f"report: {run.path / 'report.html'}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), help="a labelled file or folder to score instead")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON")
@click.option("--sensitive", metavar="COLUMN", help="fairness: metrics per group of this column (tabular runs)")
@click.option("--positive", metavar="LABEL", help="fairness: the positive class (default: the second class)")
@click.option("--bins", default=4, show_default=True, type=int, help="fairness: quantile bins of a numeric column")
@click.option("--mitigate", metavar="METHOD", help="fairness: 'threshold' (fairlearn's ThresholdOptimizer)")
@click.option("--constraint", default="demographic_parity", show_default=True,
              help="fairness: demographic_parity or equalized_odds")
def evaluate(run_dir, data, split, as_json, sensitive, positive, bins, mitigate, constraint) -> None:
    """Score a trained RUN on its test split or on other labelled data; --sensitive adds fairness."""
    from .. import load_run
    from ..core.errors import ConfigError

    if sensitive is None and (positive is not None or mitigate is not None):
        raise ConfigError("--positive and --mitigate need --sensitive COLUMN (the groups to compare)")
    run = load_run(run_dir)
    result = run.evaluate(data=data, split=split)
    fair = None if sensitive is None else run.fairness(sensitive, split, data=data, positive=positive, bins=bins,
                                                       mitigate=mitigate, constraint=constraint)
    if as_json:
        out = {"metrics": dict(result), "details": result.details}
        click.echo(json.dumps(out if fair is None else {**out, "fairness": fair.to_dict()}, indent=2))
        return
    metrics_table(f"{run_dir}: {'data ' + str(data) if data else split}", dict(result))
    if fair is not None:
        _fairness_tables(fair)


def _fairness_tables(fair) -> None:
    from rich.table import Table

    from ..tools.fairness import mitigation_rows

    table = Table(title=f"groups of {fair.column}" + (f" (positive class {fair.positive})" if fair.positive else ""),
                  header_style="bold")
    for key in fair.groups[0]:
        table.add_column(key, justify="left" if key == "group" else "right")
    for row in fair.groups:
        table.add_row(*("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    console().print(table)
    click.echo(f"demographic parity difference: {fair.demographic_parity_difference:.4f}")
    click.echo(f"equalized odds difference:     {fair.equalized_odds_difference:.4f}")
    if fair.mitigation is not None:
        rows = mitigation_rows(fair.mitigation)
        table = Table(title=f"threshold optimizer, {fair.mitigation['constraint']}", header_style="bold")
        for key in ("metric", "before", "after"):
            table.add_column(key, justify="left" if key == "metric" else "right")
        for row in rows:
            table.add_row(row["metric"], f"{row['before']:.4f}", f"{row['after']:.4f}")
        console().print(table)
    click.echo(f"fairness: {Path(fair.path) / 'fairness.json'}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.argument("inputs", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="predictions.csv", show_default=True)
def predict(run_dir, inputs, out) -> None:
    """Predict for INPUT (CSV, Parquet, NPZ, an image or a folder of images) into a CSV."""
    from .. import load_run

    run = load_run(run_dir)
    path = run.predict_to_csv(inputs, out)
    click.echo(f"predictions: {path}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="onnx", show_default=True, help="onnx, torchscript or exported-program")
@click.option("--opset", type=click.IntRange(min=7), help="ONNX opset version (default: the exporter's)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="file to write (default: RUN/export/)")
@click.option("--int8", type=click.Choice(["static", "dynamic"]),
              help="also quantize the ONNX file to int8 with onnxruntime (static: calibrated on training data)")
def export(run_dir, fmt, opset, out, int8) -> None:
    """Export a trained RUN (dynamic batch), verified against PyTorch on its own test inputs."""
    from .. import load_run

    result = load_run(run_dir).export(fmt, out=out, opset=opset, int8=int8)
    click.echo(f"{result.format}{' int8 ' + int8 if int8 else ''}: {result.path}")
    if result.int8 is None:
        click.echo(f"max abs diff vs PyTorch (batch {' and '.join(map(str, result.batches))}): {result.max_abs_diff:.3g}")
        return
    check = result.int8
    click.echo(f"float32 file: {check['fp32_path']} ({check['size_fp32']:,} bytes; int8 {check['size_int8']:,} bytes, "
               f"{check['size_fp32'] / check['size_int8']:.1f}x smaller)")
    agreement = f"top-1 agreement {check['agreement']:.2%}, " if "agreement" in check else ""
    click.echo(f"int8 vs float32 on {check['rows']} test rows: {agreement}max abs diff {check['max_abs_diff']:.3g}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: every interface)")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--backend", default="torch", show_default=True, help="torch, onnx or onnx-int8 (RUN/export/model[.int8].onnx, made if missing)")
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes")
@click.option("--max-batch", default=64, show_default=True, type=int, help="rows merged into one forward at most")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=float, help="longest wait for a batch to fill")
@click.option("--max-body-mb", default=8.0, show_default=True, type=float, help="larger request bodies get 413")
@click.option("--max-rows", default=256, show_default=True, type=int, help="more rows in one request get 422")
@click.option("--log-level", default="info", show_default=True, help="uvicorn's (warning: no access log)")
def serve(run_dir, host, port, backend, workers, max_batch, max_wait_ms, max_body_mb, max_rows, log_level) -> None:
    """Serve a trained RUN over HTTP (FastAPI + uvicorn): POST /predict, GET /health, /metadata, /docs."""
    from ..tools.serve import serve as serve_run

    serve_run(run_dir, host=host, port=port, backend=backend, workers=workers, max_batch=max_batch,
              max_wait_ms=max_wait_ms, max_body_bytes=int(max_body_mb * 1024 * 1024), max_rows=max_rows,
              log_level=log_level)


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--prompt", default="", help="text to continue (default: start from nothing)")
@click.option("--tokens", default=200, show_default=True, type=click.IntRange(min=1), help="tokens to generate")
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(min=0.0),
              help="sampling temperature; 0 picks the most likely token every time")
@click.option("--top-k", type=click.IntRange(min=1), help="sample among the K most likely tokens only")
@click.option("--seed", default=0, show_default=True, type=int, help="random seed (same seed, same output)")
@click.option("--n", "n", default=64, show_default=True, type=click.IntRange(min=1),
              help="vae / gan / diffusion runs: how many samples")
@click.option("--class", "class_", help="conditional gan / diffusion runs: the class to generate (name or id)")
@click.option("--steps", type=click.IntRange(min=1), help="diffusion runs: DDIM sampling steps")
@click.option("--guidance", default=0.0, type=float, help="diffusion runs: classifier-free guidance weight")
@click.option("--out", type=click.Path(path_type=Path),
              help="vae / gan / diffusion runs: a .png grid, a folder (one PNG each) or a .csv (tabular runs); "
                   "default RUN/samples.png or RUN/samples.csv")
def generate(run_dir, prompt, tokens, temperature, top_k, seed, n, class_, steps, guidance, out) -> None:
    """Generate text from a language-model RUN, or samples from a vae, gan or diffusion RUN."""
    from .. import load_run
    from ..core.errors import ConfigError
    from ..tools.generate import GENERATIVE_TASKS

    run = load_run(run_dir)
    if run.config.task in GENERATIVE_TASKS or run.config.task == "reconstruction":
        if prompt:
            raise ConfigError("--prompt: only language-model runs continue a prompt; drop it for this run")
        samples = run.generate(seed=seed, n=n, labels=class_, steps=steps, guidance=guidance,
                               out=out or run.path / ("samples.png" if run.spec.kind == "image" else "samples.csv"))
        where = samples.files[0] if len(samples.files) == 1 else samples.files[0].parent
        click.echo(f"{len(samples)} samples -> {where}")
        return
    for flag, value in (("--class", class_), ("--steps", steps), ("--guidance", guidance or None), ("--out", out)):
        if value is not None:
            raise ConfigError(f"{flag}: only vae, gan and diffusion runs take it; this run generates text")
    click.echo(run.generate(prompt, tokens, temperature=temperature, top_k=top_k, seed=seed))


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--input", "inputs", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="a CSV with the recent history: the run's time column and value columns")
@click.option("--horizon", type=click.IntRange(min=1), help="steps to forecast (default: the run's horizon)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="forecast.csv", show_default=True,
              help="where to write the forecast; a plot is written beside it (.png)")
def forecast(run_dir, inputs, horizon, out) -> None:
    """Forecast the next steps after the history in --input with a trained forecasting RUN."""
    from .. import load_run
    from ..tools.forecast import write_forecast

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
    from .. import load_run

    result = load_run(run_dir).attack(method, list(eps) or None, steps, norm, split, samples, target)
    rows = {f"eps={e:g}": a for e, a in zip(result.eps, result.accuracy)}
    metrics_table(f"{run_dir}: accuracy under {method} ({norm}, {result.samples} {split} samples)", rows)
    if result.target_rate is not None:
        metrics_table(f"predicted as target class {result.target_class}",
                       {f"eps={e:g}": r for e, r in zip(result.eps, result.target_rate)})
    click.echo(f"results: {Path(result.path) / 'attack.json'}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--method", "methods", multiple=True,
              help="saliency, integrated_gradients, gradient_shap, kernel_shap, lime, occlusion, attention, "
                   "attention_rollout (repeatable; default: every method that fits the run)")
@click.option("--samples", default=8, show_default=True, type=click.IntRange(min=1), help="examples to explain")
@click.option("--target", help="explain this class instead of the predicted one")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--no-trust", is_flag=True, help="skip the trust table (faster)")
@click.option("--seed", default=0, show_default=True, type=int, help="picks the samples and seeds sampling methods")
@click.option("--json", "as_json", is_flag=True, help="print explain.json, raw attributions included")
def explain(run_dir, methods, samples, target, split, no_trust, seed, as_json) -> None:
    """Explain a trained RUN's predictions (Captum attributions, pictures, trust table) into RUN/explain/."""
    from rich.table import Table

    from .. import load_run
    from ..tools.explain import trust_rows

    result = load_run(run_dir).explain(list(methods) or None, samples, target, split, trust=not no_trust, seed=seed,
                                       include_attributions=as_json)
    if as_json:
        click.echo((Path(result.path) / "explain.json").read_text())
        return
    rows = trust_rows(result.trust)
    if rows:
        table = Table(title=f"{run_dir}: how far to trust each explanation ({result.samples} {split} samples)",
                      header_style="bold")
        short = {"random_deletion_auc": "random del.", "random_insertion_auc": "random ins.",
                 "randomisation_spearman": "rand. spearman"}
        for key in rows[0]:
            table.add_column(short.get(key, key), justify="left" if key in ("method", "sanity check") else "right")
        for row in rows:
            table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
        console().print(table)
    if result.trust_note:
        click.echo(result.trust_note)
    click.echo(f"explanations: {result.path}")


@cli.command(context_settings=CONTEXT)
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--folds", default=5, show_default=True, type=int, help="number of folds")
@set_option
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path))
def cv(config, folds, overrides, runs_dir) -> None:
    """Stratified k-fold cross-validation of CONFIG: mean ± std of each metric."""
    from rich.table import Table

    from .. import cross_validate

    result = cross_validate(config, folds, overrides=list(overrides), quiet=False, out_dir=runs_dir)
    table = Table(title=f"{folds}-fold cross-validation", header_style="bold")
    for col in ("metric", "mean", "std"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, mean, std in result.summary():
        table.add_row(key, f"{mean:.4f}", f"± {std:.4f}")
    console().print(table)
    click.echo(f"results: {Path(result['path']) / 'cv.json'}")


@cli.command(context_settings=CONTEXT)
@click.argument("teacher", metavar="TEACHER_RUN", type=click.Path(path_type=Path))
@click.argument("student", metavar="STUDENT_CONFIG", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--temperature", default=4.0, show_default=True, type=float, help="softens both models' probabilities")
@click.option("--alpha", default=0.9, show_default=True, type=float,
              help="weight of the soft-target term (0: plain cross-entropy on the labels)")
@set_option
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--no-baseline", is_flag=True, help="do not also train the student alone for comparison")
@click.option("--quiet", is_flag=True, help="no progress output")
def distill(teacher, student, temperature, alpha, overrides, runs_dir, no_baseline, quiet) -> None:
    """Distil a trained classification TEACHER_RUN into a student from STUDENT_CONFIG (Hinton et al., 2015)."""
    from rich.table import Table

    from .. import distill as distill_run

    run = distill_run(teacher, student, temperature=temperature, alpha=alpha, baseline=not no_baseline,
                      runs_dir=runs_dir, overrides=overrides, quiet=quiet)
    rows = run.metrics["distillation"]["rows"]
    table = Table(title=f"distillation, T={temperature:g}, alpha={alpha:g} ({run.metrics['split']} split)",
                  header_style="bold")
    for col in ("model", "family", "parameters", "accuracy", "errors"):
        table.add_column(col, justify="left" if col in ("model", "family") else "right")
    for row in rows:
        errors = "-" if row["errors"] is None else f"{row['errors']} / {row['samples']}"
        table.add_row(row["role"], row["family"], f"{row['parameters']:,}", f"{row['accuracy']:.4f}", errors)
    console().print(table)
    click.echo(f"run:    {run.path}")
    click.echo(f"report: {run.path / 'report.html'}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--quantize", help="int8 quantization: dynamic, static (calibrated) or qat (fine-tuned)")
@click.option("--prune", help="pruning: magnitude (global, unstructured) or structured (removes channels)")
@click.option("--sparsity", type=float, help="pruning: fraction of weights / channels to remove, in (0, 1)")
@click.option("--iterative", default=1, show_default=True, type=int, help="pruning rounds towards the sparsity")
@click.option("--finetune-epochs", default=0, show_default=True, type=int,
              help="epochs of fine-tuning after each pruning round, or of quantization-aware training")
@click.option("--calibration-batches", default=8, show_default=True, type=int,
              help="static: training batches that calibrate the activation ranges")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path),
              help="where to write the new run (default: beside RUN)")
def compress(run_dir, quantize, prune, sparsity, iterative, finetune_epochs, calibration_batches, runs_dir) -> None:
    """Quantize or prune a trained RUN into a new run; prints its path and the size/latency/accuracy table."""
    from .. import load_run

    result = load_run(run_dir).compress(quantize=quantize, prune=prune, sparsity=sparsity, iterative=iterative,
                                        finetune_epochs=finetune_epochs, calibration_batches=calibration_batches,
                                        runs_dir=runs_dir)
    console().print(result.rich_table())
    click.echo(f"run: {result.path}")


@cli.group(context_settings=CONTEXT, invoke_without_command=True)
@click.pass_context
def models(ctx) -> None:
    """List model families, their inputs and hyperparameters (or `models show CONFIG`)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from ..models import FAMILIES, describe_family

    table = Table(title="model families", header_style="bold", show_lines=True)
    for col in ("family", "accepts", "hyperparameters (default)", "summary"):
        table.add_column(col)
    for name in FAMILIES:
        info = describe_family(name)
        params = "\n".join(f"{k} ({'required' if v['required'] else v['default']})" for k, v in info["params"].items())
        table.add_row(name, ", ".join(info["accepts"]) or "any", params, info["summary"])
    console().print(table)


@models.command("show", context_settings=CONTEXT)
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@set_option
def models_show(config, overrides) -> None:
    """Build CONFIG's model and print its layers, output shapes and parameter counts."""
    from rich.table import Table

    from ..models.summary import summarize
    from ..runs.config import load_config
    from ..runs.run import prepare

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
    console().print(table)


@cli.command(context_settings=CONTEXT)
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--reference", is_flag=True, help="print the configuration reference (Markdown) instead")
def config(config, overrides, reference) -> None:
    """Validate CONFIG and print it fully resolved (every default filled in)."""
    from ..runs.config import load_config

    if reference:
        from ..runs.reference import config_reference

        click.echo(config_reference(), nl=False)
        return
    click.echo(load_config(config, list(overrides)).to_yaml(), nl=False)


from .generative import anomaly, embed, quality  # noqa: E402  (the generative runs' verbs)

for _command in (anomaly, embed, quality):
    cli.add_command(_command)


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
