"""The command line: a thin layer over the Python API (every verb calls a public function).

The commands here are the run lifecycle (train, evaluate, predict, config, models, tools); every
post-training verb (explain, attack, export, serve...) is a registered tool whose command is
derived from its declaration (``cli/tools.py``).

Errors a user can cause print one line and exit with code 2; ``--debug`` anywhere on the command
line shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from pathlib import Path

import click

from ..core.config import ConfigDeprecationWarning
from ..core.errors import LayerwiseError, TrainingInterrupted
from .common import CONTEXT, console, metrics_table, trust_option
from .tools import ToolGroup, option_params, tool_values, tools_markdown


@click.group(cls=ToolGroup, context_settings=CONTEXT)
@click.version_option(package_name="layerwise", message="layerwise %(version)s")
def cli() -> None:
    """layerwise: train, evaluate and use deep-learning models from a YAML file.

    Add --debug anywhere to see full tracebacks.
    """


set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="override a config key, e.g. --set train.epochs=3 (repeatable)")


def _trust_run(command: click.Command) -> click.Command:
    """Add ``--trust-run`` to a command that loads runs (the tools' commands get it in cli/tools.py)."""
    command.params.append(trust_option())
    return command


@_trust_run
@cli.command(context_settings=CONTEXT)
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path), help="continue an interrupted run")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--quiet", is_flag=True, help="no progress output")
def train(config, overrides, resume, runs_dir, quiet, trust_run) -> None:
    """Train CONFIG (default: a CNN on the bundled digits) into runs/NAME-TIMESTAMP/."""
    from .. import runs
    from ..runs.trust import trusting_runs

    if resume is not None and config is not None:
        raise click.UsageError("give either CONFIG or --resume RUN, not both (a resumed run keeps its config)")
    with trusting_runs(trust_run):  # --resume RUN, a synthetic source's generator run
        run = runs.train(config, resume=resume, runs_dir=runs_dir, quiet=quiet, overrides=overrides)
    from ..runs.baselines import baseline_line

    metrics = run.metrics
    metrics_table(f"{run.config.name}: {metrics['split']} metrics", metrics["metrics"])
    line = baseline_line(metrics, run.task.main_metric)  # tabular runs: the network beside sklearn's models
    if line:
        click.echo(line)
    click.echo(f"run:    {run.path}")
    click.echo(f"report: {run.path / 'report.html'}")


def _fairness_options(command):
    """evaluate's --sensitive, --positive...: the fairness tool's own declaration (one set of defaults)."""
    from ..tools.fairness import FairnessOptions

    for param in option_params(FairnessOptions, skip=("split", "data")):
        param.required = False  # evaluate without --sensitive is plain evaluation
        command.params.append(param)
    return command


@_trust_run
@_fairness_options
@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), help="a labelled file or folder to score instead")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON")
def evaluate(run_dir, data, split, as_json, trust_run, **fairness) -> None:
    """Score a trained RUN on its test split or on other labelled data; --sensitive adds fairness."""
    from .. import load_run
    from ..core.errors import ConfigError
    from ..runs.tools import TOOLS
    from ..runs.trust import trusting_runs
    from ..tools.fairness import FairnessOptions, print_fairness

    if fairness["sensitive"] is None and (fairness["positive"] is not None or fairness["mitigate"] is not None):
        raise ConfigError("--positive and --mitigate need --sensitive COLUMN (the groups to compare)")
    with trusting_runs(trust_run):  # RUN, and a run its data loads in turn (a synthetic source's generator)
        run = load_run(run_dir)
        result = run.evaluate(data=data, split=split)
        fair = None
        if fairness["sensitive"] is not None:
            fair = TOOLS.get("fairness")(run, split=split, data=data, **tool_values(FairnessOptions, fairness))
    if as_json:
        out = {"metrics": dict(result), "details": result.details}
        click.echo(json.dumps(out if fair is None else {**out, "fairness": fair.to_dict()}, indent=2))
        return
    metrics_table(f"{run_dir}: {'data ' + str(data) if data else split}", dict(result))
    if fair is not None:
        print_fairness(fair)


@_trust_run
@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.argument("inputs", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="predictions.csv", show_default=True)
def predict(run_dir, inputs, out, trust_run) -> None:
    """Predict for INPUT (CSV, Parquet, NPZ, an image or a folder of images) into a CSV."""
    from .. import load_run
    from ..runs.trust import trusting_runs

    with trusting_runs(trust_run):
        run = load_run(run_dir)
        path = run.predict_to_csv(inputs, out)
    click.echo(f"predictions: {path}")


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
    from ..runs.prepare import prepare

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
@click.option("--data", "with_data", is_flag=True,
              help="also read the data: print what the recipe picks from it (a table's model and training) and "
                   "the task it implies, as the run will record them")
def config(config, overrides, reference, with_data) -> None:
    """Validate CONFIG and print it fully resolved (every default filled in)."""
    from ..runs.config import load_config

    if reference:
        from ..runs.reference import config_reference

        click.echo(config_reference(), nl=False)
        return
    cfg = load_config(config, list(overrides))
    if with_data:
        from ..runs.selection import candidates
        from ..runs.prepare import prepare

        prepared = prepare(cfg)
        families = candidates(cfg, prepared.bundle.spec, len(prepared.bundle.train))
        cfg = prepared.config
        if families:  # YAML comments: the printed config still loads
            click.echo(f"# model: chosen when training, by the lowest validation loss among {', '.join(families)};\n"
                       f"# shown: {cfg.model.family} as its recipe sizes it")
    click.echo(cfg.to_yaml(), nl=False)


@cli.command("tools", context_settings=CONTEXT)
@click.option("--markdown", is_flag=True, help="print the docs' verb table (Markdown) instead")
def tools_list(markdown) -> None:
    """List the tools (post-training verbs) and their options, plugins' included."""
    from ..runs.tools import TOOLS, field_extra

    if markdown:
        click.echo(tools_markdown(), nl=False)
        return
    from rich.table import Table

    table = Table(title="tools: layerwise VERB RUN [OPTIONS]  (Python: run.VERB(...))", header_style="bold",
                  show_lines=True)
    for col in ("verb", "acts on", "options (default)", "summary"):
        table.add_column(col)
    for name, tool in TOOLS.items():
        shown = [f"{n} ({f.default})" for n, f in tool.Options.model_fields.items()
                 if field_extra(tool.Options, n)["cli"] and not f.is_required()]
        required = [n for n, f in tool.Options.model_fields.items() if f.is_required()]
        table.add_row(name, " ".join([tool.subject.upper(), *map(str.upper, required)]), "\n".join(shown),
                      tool.summary)
    console().print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors with exit code 2, tracebacks only with --debug.

    Deprecated config spellings print one ``warning:`` line each once the command has finished (not
    after an error: then the one error line is what to fix)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("LAYERWISE_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    with warnings.catch_warnings():
        deprecations = _hold_deprecations()
        try:
            cli.main(args=args, prog_name="layerwise", standalone_mode=False)
        except LayerwiseError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            return 2
        except (click.exceptions.Abort, KeyboardInterrupt) as exc:
            # training says what it kept and how to continue (TrainingInterrupted: click wraps it in
            # Abort); anything else stopped before a run directory existed, or only read one
            stopped = exc.__cause__ if isinstance(exc.__cause__, TrainingInterrupted) else exc
            click.echo(str(stopped) if isinstance(stopped, TrainingInterrupted) else "interrupted", err=True)
            return 128 + getattr(stopped, "signum", signal.SIGINT)
        except click.ClickException as exc:
            exc.show()
            return exc.exit_code
    for message in dict.fromkeys(deprecations):
        click.echo(f"warning: {message}", err=True)
    return 0


def _hold_deprecations() -> list[str]:
    """Collect :class:`ConfigDeprecationWarning` messages (inside ``warnings.catch_warnings``); other
    warnings show as usual."""
    held: list[str] = []
    show = warnings.showwarning

    def hold(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConfigDeprecationWarning):
            held.append(str(message))
        else:
            show(message, category, filename, lineno, file, line)

    warnings.simplefilter("always", ConfigDeprecationWarning)
    warnings.showwarning = hold
    return held
