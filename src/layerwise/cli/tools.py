"""Click commands derived from the tools' declarations (``layerwise.runs.tools``): one field, one option.

Each field of a tool's Options model becomes a click option (or argument) with the field's
default and description; its type picks the click type: ``bool`` a flag (``--no-x`` when it
defaults to True), ``list[...]`` a repeatable option, ``Literal`` a choice, a bounded ``int`` or
``float`` a range, ``Path`` a path. Nothing about a verb is written here, so a verb's defaults
exist once, in its tool module.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import click

from ..runs.tools import TOOLS, Tool, ToolOptions, field_extra
from .common import CONTEXT, trust_option

__all__ = ["ToolGroup", "option_params", "tool_command", "tool_values", "tools_markdown"]


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``None``, whether it is a list)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, tuple):
        return typing.get_args(annotation)[0], True
    return annotation, False


def _click_type(annotation: Any, metadata: list[Any]) -> Any:
    if typing.get_origin(annotation) is Literal:
        return click.Choice([str(v) for v in typing.get_args(annotation)])
    if annotation in (int, float):
        bounds = {}
        for item in metadata:
            for attr, key, clamp in (("ge", "min", False), ("gt", "min", True), ("le", "max", False),
                                     ("lt", "max", True)):
                if getattr(item, attr, None) is not None:
                    bounds[key] = getattr(item, attr)
                    bounds[f"{key}_open"] = clamp
        if not bounds:
            return click.INT if annotation is int else click.FLOAT
        return (click.IntRange if annotation is int else click.FloatRange)(**bounds)
    if annotation is Path:
        return click.Path(path_type=Path)
    return click.STRING


def option_params(options: type[ToolOptions], skip: tuple[str, ...] = ()) -> list[click.Parameter]:
    """The click parameters of every command-line field of ``options`` (arguments first, as click wants)."""
    arguments, flags = [], []
    for name, field in options.model_fields.items():
        extra = field_extra(options, name)
        if not extra["cli"] or name in skip:
            continue
        annotation, many = _unwrap(field.annotation)
        default = extra["cli_default"] if extra["cli_default"] is not None else field.default
        required = field.is_required()
        if extra["argument"]:
            arguments.append(click.Argument([name], required=required, nargs=-1 if many else 1,
                                            metavar=extra["metavar"] or name.upper(),
                                            type=_click_type(annotation, field.metadata)))
            continue
        flag = extra["flag"] or "--" + name.replace("_", "-")
        common = {"help": field.description, "metavar": extra["metavar"]}
        if annotation is bool:
            if default is True:  # the flag turns it off: --no-trust
                flags.append(click.Option([flag, name], is_flag=True, flag_value=False, default=True, **common))
            else:
                flags.append(click.Option([flag, name], is_flag=True, default=False, **common))
            continue
        shown = default is not None and not many
        flags.append(click.Option([flag, name], type=_click_type(annotation, field.metadata), multiple=many,
                                  required=required, default=None if many else (None if required else default),
                                  show_default=shown, **common))
    return arguments + flags


def tool_values(options: type[ToolOptions], values: dict[str, Any]) -> dict[str, Any]:
    """Click's values as the Options model takes them: an empty repeatable option is its default."""
    out = {}
    for name, value in values.items():
        if name not in options.model_fields:
            continue
        if isinstance(value, tuple):
            value = list(value) if value else options.model_fields[name].default
        out[name] = value
    return out


def tool_command(tool: Tool) -> click.Command:
    """The click command of ``tool``: its subject (RUN or CONFIG), then its options."""
    metavar = {"run": "RUN", "config": "CONFIG"}[tool.subject]
    subject = click.Argument(["subject"], metavar=tool.metavar or metavar, required=tool.subject == "run",
                             type=click.Path(path_type=Path))

    def callback(subject: Path | None, trust_run: bool, **values: Any) -> None:
        from ..runs.trust import trusting_runs

        options = tool.options(**tool_values(tool.Options, values))
        with trusting_runs(trust_run):  # RUN, and any run the tool loads in turn (a teacher, a classifier)
            if tool.subject == "run":
                from ..runs import load_run

                subject = load_run(subject)
            tool.show(tool.function(subject, options), options)

    params = [subject, *option_params(tool.Options), trust_option()]
    return click.Command(tool.name, callback=callback, params=params, help=tool.summary, context_settings=CONTEXT)


class ToolGroup(click.Group):
    """The ``layerwise`` group: its own commands, then every registered tool, built when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *TOOLS.names()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        if name in TOOLS or name in TOOLS.names():  # the second loads plugins, only for a name not built in
            return tool_command(TOOLS.get(name))
        return None


def _shown(value: Any) -> str:
    return str(value) if not isinstance(value, Path) else value.as_posix()


def tools_markdown() -> str:
    """The verb table of docs/tools.md, from the declarations: every tool, its subject, its options."""
    lines = ["| verb | Python | arguments and options (default) | what it does |", "|---|---|---|---|"]
    for name, tool in TOOLS.items():
        subject = tool.metavar or {"run": "RUN", "config": "[CONFIG]"}[tool.subject]
        opts = [f"`{subject}`"]
        for field_name, field in tool.Options.model_fields.items():
            extra = field_extra(tool.Options, field_name)
            if extra["argument"]:
                opts.append(f"`{extra['metavar'] or field_name.upper()}`")
                continue
            flag = extra["flag"] or "--" + field_name.replace("_", "-")
            text = f"`{flag}`" if extra["cli"] else f"`{field_name}=` (Python only)"
            if extra["cli_default"] is not None:
                text += f" (CLI: {_shown(extra['cli_default'])})"
            elif not field.is_required() and field.default is not None and field.annotation is not bool:
                text += f" ({_shown(field.default)})"
            elif field.is_required():
                text += " (required)"
            opts.append(text)
        python = f"`run.{name.replace('-', '_')}(...)`" if tool.subject == "run" else f"`{tool.function.__name__}(config, ...)`"
        lines.append(f"| `layerwise {name}` | {python} | {'<br>'.join(opts)} | {tool.summary} |")
    return "\n".join(lines) + "\n"
