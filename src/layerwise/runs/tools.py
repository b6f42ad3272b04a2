"""Tools: the post-training verbs (explain, attack, export, serve...), each declared once.

A tool is one function ``run(subject, options) -> result`` plus one pydantic model of its options
whose field descriptions are the help text. Everything else is derived from that declaration:

- the Python entry points: ``run.explain(samples=4)`` (``Run`` delegates to every tool whose
  subject is a run), and the tool object itself, ``explain_run(run, samples=4)``;
- the command line: ``layerwise explain RUN --samples 4``, its ``--help`` and its defaults
  (``layerwise.cli.tools`` turns each field into a click option);
- the docs' verb table (``layerwise tools``).

>>> class EchoOptions(ToolOptions):
...     times: int = option(1, "how often to say it", ge=1)
>>> @register_tool("echo", EchoOptions)
... def echo(run, options):
...     '''Say the run's name.'''
...     return [run] * options.times

Adding a verb is adding one module to ``layerwise.tools`` (or to a plugin package): it registers
here when imported, and the CLI, ``Run`` and the docs find it by name.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.errors import ConfigError
from ..core.registry import Registry, did_you_mean

__all__ = ["TOOLS", "Tool", "ToolOptions", "option", "register_tool"]


class ToolOptions(BaseModel):
    """A tool's options: unknown names are errors; arbitrary values (arrays, frames, runs) pass through."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())


def option(default: Any = ..., description: str = "", *, flag: str | None = None, metavar: str | None = None,
           argument: bool = False, cli: bool = True, python: bool = True, cli_default: Any = None,
           **constraints: Any) -> Any:
    """One option of a tool: its default, its help text and how the command line spells it.

    ``flag``: the CLI spelling when it is not ``--field-name`` (``--class``; for a boolean that
    defaults to True, the flag that turns it off, ``--no-trust``). ``argument``: a positional CLI
    argument (``INPUT``) instead of an option. ``cli=False``: Python only (an output folder, a
    device); ``python=False``: the command line's presentation only (``--json``). ``cli_default``:
    where a command writes a file the Python call returns instead (``forecast.csv``), the CLI's
    default, declared here beside the field it belongs to. ``constraints``: pydantic's (``ge=1``).
    """
    extra = {"flag": flag, "metavar": metavar, "argument": argument, "cli": cli, "python": python,
             "cli_default": cli_default}
    return Field(default, description=description, json_schema_extra=extra, **constraints)


def field_extra(options: type[ToolOptions], name: str) -> dict[str, Any]:
    """The CLI metadata :func:`option` attached to a field (plain pydantic fields get the defaults)."""
    extra = options.model_fields[name].json_schema_extra
    base = {"flag": None, "metavar": None, "argument": False, "cli": True, "python": True, "cli_default": None}
    return {**base, **(extra if isinstance(extra, dict) else {})}


class Tool:
    """A registered verb: ``function(subject, options)`` with its ``Options`` model.

    ``subject``: what the verb acts on. ``"run"``: a trained run (the CLI takes ``RUN``; a path is
    loaded with :func:`~layerwise.runs.load_run`) and ``Run`` gets the verb as a method.
    ``"config"``: an experiment config (the CLI takes an optional ``CONFIG`` path).

    Calling the tool validates its options, so ``tool(run, samples=4)`` and ``tool(run, 4)`` (the
    Python fields in declaration order) take one set of defaults, the declaration's.
    """

    subjects: ClassVar[tuple[str, ...]] = ("run", "config")

    def __init__(self, name: str, options: type[ToolOptions], function: Callable[[Any, Any], Any],
                 subject: Literal["run", "config"] = "run", metavar: str | None = None,
                 show: Callable[[Any, Any], None] | None = None):
        if subject not in self.subjects:
            raise ValueError(f"tool '{name}': subject must be one of {self.subjects}, not {subject!r}")
        self.name, self.Options, self.function, self.subject = name, options, function, subject
        self.metavar = metavar  # the CLI's name of the subject, when not RUN / CONFIG (TEACHER_RUN)
        self._show = show
        self.__doc__ = function.__doc__
        self.__wrapped__ = function
        self.__signature__ = self.signature()

    def __repr__(self) -> str:
        return f"<tool {self.name}: {self.summary}>"

    @property
    def summary(self) -> str:
        """The first line of the function's docstring: the CLI's one-line help."""
        return inspect.cleandoc(self.function.__doc__ or self.name).split("\n\n")[0].replace("\n", " ")

    def python_fields(self) -> list[str]:
        return [n for n in self.Options.model_fields if field_extra(self.Options, n)["python"]]

    def options(self, *args: Any, **kwargs: Any) -> ToolOptions:
        """Validate a call's arguments into the Options model; bad values are one-line ConfigErrors."""
        names = self.python_fields()
        if len(args) > len(names):
            raise TypeError(f"{self.name}() takes at most {len(names)} positional options ({len(args)} given)")
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"{self.name}() got two values for '{name}'")
            kwargs[name] = value
        try:
            return self.Options(**kwargs)
        except ValidationError as exc:
            raise ConfigError(f"{self.name}: {_one_line(exc, list(self.Options.model_fields))}") from None

    def __call__(self, subject: Any, *args: Any, **kwargs: Any) -> Any:
        return self.function(subject, self.options(*args, **kwargs))

    def bind(self, subject: Any) -> Callable[..., Any]:
        """The tool as a method of ``subject``: ``run.explain(samples=4)``."""

        def method(*args: Any, **kwargs: Any) -> Any:
            return self(subject, *args, **kwargs)

        method.__name__, method.__doc__ = self.name, self.function.__doc__
        method.__signature__ = self.signature(bound=True)  # type: ignore[attr-defined]
        return method

    def signature(self, bound: bool = False) -> inspect.Signature:
        """The Python signature the Options model implies (for help(), IDEs and the docs)."""
        params = [] if bound else [inspect.Parameter(self.subject, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        for name in self.python_fields():
            field = self.Options.model_fields[name]
            default = inspect.Parameter.empty if field.is_required() else field.default
            params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                            annotation=field.annotation))
        return inspect.Signature(params)

    def printer(self, show: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        """Decorate the function that prints a result for the command line: ``@explain_run.printer``."""
        self._show = show
        return show

    def show(self, result: Any, options: ToolOptions) -> None:
        """Print ``result`` on the terminal (the CLI's summary); default: its repr."""
        if self._show is not None:
            self._show(result, options)
        elif result is not None:
            print(result)


TOOLS: Registry[Tool] = Registry("tool", key="layerwise <verb>")


def register_tool(name: str, options: type[ToolOptions], *, subject: Literal["run", "config"] = "run",
                  metavar: str | None = None) -> Callable[[Callable[[Any, Any], Any]], Tool]:
    """Register ``function(subject, options)`` as the verb ``name``; the decorated name becomes the Tool."""

    def add(function: Callable[[Any, Any], Any]) -> Tool:
        return TOOLS.register(name)(Tool(name, options, function, subject, metavar))

    return add


def _one_line(exc: ValidationError, names: list[str]) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "options"
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown option '{where}'{did_you_mean(where, names)}; it takes {', '.join(names)}")
        else:
            parts.append(f"{where}: {error['msg']} (received {error.get('input')!r})")
    return "; ".join(parts)
