"""Tools: each verb's options are declared once, and the CLI, Run's methods and the docs follow.

These tests hold the derivation to its promise: every click option of every verb has its tool's
default, `run.VERB` takes the tool's signature, and a verb registered from one file appears in all
three places (the plugin test adds one from another package through the CLI).
"""

from __future__ import annotations

import inspect

import click
import click.testing
import pytest
from helpers import assert_one_line_error, cli, quick_train, tiny_mlp

import layerwise
from layerwise.cli.main import cli as root
from layerwise.runs.tools import TOOLS, ToolOptions, field_extra, option, register_tool

EXPECTED = {"anomaly", "attack", "compress", "cv", "distill", "embed", "explain", "export", "fairness", "forecast",
            "generate", "quality", "serve"}


def _command(name: str) -> click.Command:
    with click.Context(root) as ctx:
        return root.get_command(ctx, name)


def test_every_verb_is_a_registered_tool_with_a_command():
    assert EXPECTED <= set(TOOLS.names())
    for name in EXPECTED:
        assert isinstance(_command(name), click.Command), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_click_default_is_the_declared_default(name):
    tool = TOOLS.get(name)
    params = {p.name: p for p in _command(name).params}
    for field_name, field in tool.Options.model_fields.items():
        extra = field_extra(tool.Options, field_name)
        if not extra["cli"]:
            assert field_name not in params  # Python only: no flag
            continue
        param = params[field_name]
        assert param.help == field.description if isinstance(param, click.Option) else True
        if field.is_required():
            assert param.required or field_name == "sensitive", field_name
            continue
        declared = extra["cli_default"] if extra["cli_default"] is not None else field.default
        clicked = param.default if not (isinstance(param, click.Option) and param.multiple) else None
        assert clicked == declared, f"{name} --{field_name}: click {clicked!r}, declared {declared!r}"


def test_evaluate_takes_the_fairness_tools_options_and_defaults():
    fairness = TOOLS.get("fairness").Options
    params = {p.name: p for p in _command("evaluate").params}
    assert params["sensitive"].default is None and not params["sensitive"].required  # optional for evaluate
    for field_name in ("positive", "bins", "mitigate", "constraint"):
        assert params[field_name].default == fairness.model_fields[field_name].default
        assert params[field_name].help == fairness.model_fields[field_name].description


def test_run_methods_take_the_tools_signature():
    run_tools = [name for name, tool in TOOLS.items() if tool.subject == "run"]
    assert {"explain", "attack", "export", "serve", "generate", "fairness"} <= set(run_tools)
    signature = inspect.signature(TOOLS.get("attack").bind(object()))
    assert list(signature.parameters)[:3] == ["method", "eps", "steps"]
    assert signature.parameters["samples"].default == TOOLS.get("attack").Options.model_fields["samples"].default
    assert "out_dir" in signature.parameters and "as_json" not in inspect.signature(TOOLS.get("quality").bind(None)).parameters


def test_a_tool_registered_from_one_file_is_a_run_method_and_a_verb(tmp_path):
    class CountOptions(ToolOptions):
        scale: int = option(2, "multiplies the number of parameters", ge=1)

    @register_tool("count-parameters", CountOptions)
    def count_parameters(run, options: CountOptions) -> int:
        """Count a RUN's parameters (times scale)."""
        return options.scale * sum(p.numel() for p in run.model.parameters())

    try:
        run = layerwise.train({"data": {"name": "iris"}, "model": tiny_mlp(), "train": quick_train(epochs=1)},
                              runs_dir=tmp_path, quiet=True)
        total = sum(p.numel() for p in run.model.parameters())
        assert run.count_parameters() == 2 * total and run.count_parameters(3) == 3 * total
        assert "count_parameters" in dir(run)
        with pytest.raises(layerwise.ConfigError, match="scale"):
            run.count_parameters(scale=0)
        with pytest.raises(layerwise.ConfigError, match="unknown option 'scal'.*did you mean 'scale'"):
            run.count_parameters(scal=2)
        result = click.testing.CliRunner().invoke(root, ["count-parameters", str(run.path), "--scale", "4"],
                                                  standalone_mode=False)
        assert result.exit_code == 0, result.output
        assert "count-parameters" in root.list_commands(click.Context(root))
    finally:
        TOOLS._entries.pop("count-parameters")


def test_tools_verb_lists_and_documents_every_tool(tmp_path):
    code, out, err = cli("tools", "--markdown", cwd=tmp_path)
    assert code == 0, err
    for name in EXPECTED:
        assert f"`layerwise {name}`" in out
    assert "`--samples` (500)" in out  # attack's declared default, straight from the declaration


def test_a_bad_option_value_is_one_line_on_the_cli(tmp_path):
    code, _out, err = cli("generate", tmp_path / "missing-run", "--tokens", "0", cwd=tmp_path)
    assert code == 2 and "--tokens" in err and "Traceback" not in err
    code, _out, err = cli("explain", tmp_path / "missing-run", cwd=tmp_path)
    assert_one_line_error(code, err, "run directory not found")


def test_docs_verb_table_is_the_generated_one():
    from pathlib import Path

    from layerwise.cli.tools import tools_markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "tools.md").read_text()
    assert tools_markdown() in page, "regenerate the table: layerwise tools --markdown (docs/tools.md)"
