"""One small registry type for every extension point (models, data sources, tasks, optimizers...).

A registry maps a name to an object added with a decorator; looking up an unknown name raises a
:class:`~layerwise.core.errors.ConfigError` that suggests the closest valid names.

Entries can also come from other installed packages: a package that declares an entry point in the
group ``layerwise.plugins`` (``[project.entry-points."layerwise.plugins"] my_plugin = "my_package"``)
has that module imported the first time any registry is listed or asked for a name it does not
hold, and the module registers its families, sources, tasks... with the same decorators as
layerwise's own files. Nothing is imported at ``import layerwise``: a broken plugin cannot slow it
down or break it, only the lookup that needed plugins, with a one-line :class:`PluginError`.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError, PluginError

T = TypeVar("T")

PLUGIN_GROUP = "layerwise.plugins"
_plugins_loaded = False


def load_plugins() -> list[str]:
    """Import the module of every ``layerwise.plugins`` entry point, once per process; returns their names."""
    global _plugins_loaded
    if _plugins_loaded:
        return []
    _plugins_loaded = True  # first: a plugin that looks a name up while it loads must not recurse
    from importlib.metadata import entry_points

    loaded = []
    for point in entry_points(group=PLUGIN_GROUP):
        try:
            point.load()
        except Exception as exc:  # noqa: BLE001 - whatever a third-party module raises, say which plugin
            raise PluginError(f"plugin '{point.name}' ({point.value}, entry-point group {PLUGIN_GROUP}) failed to "
                              f"load: {type(exc).__name__}: {exc}; fix or uninstall the package that provides it") from exc
        loaded.append(point.name)
    return loaded


def did_you_mean(name: str, choices: list[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for the closest match of ``name``, or ''."""
    close = difflib.get_close_matches(name, choices, n=2, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)"


def quoted(name: object) -> str:
    """A name the user wrote, for a one-line message: its repr (quoted, a newline shown as ``\\n``),
    cut to 40 characters."""
    try:
        text = repr(name)
    except (ValueError, RecursionError):  # an integer past Python's 4300 digits, a list inside itself
        return f"a value of type {type(name).__name__}"
    return text if len(text) <= 40 else text[:36] + ("...'" if isinstance(name, str) else "...")


def import_submodules(package: str, skip: tuple[str, ...] = ()) -> None:
    """Import every public module of ``package``: adding a file is enough to register its entries."""
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("_") and info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")


class Registry(Generic[T]):
    """Names to objects, filled by ``@registry.register("name")``.

    >>> optimizers = Registry("optimizer", key="train.optimizer")
    >>> @optimizers.register("sgd")
    ... def make_sgd(params, cfg): ...
    """

    def __init__(self, kind: str, key: str):
        self.kind = kind  # what the entries are, for messages: "model family"
        self.key = key  # the config key that names an entry, for messages: "model.family"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if not isinstance(name, str):  # a list or a mapping cannot be looked up (unhashable), a number names nothing
            raise ConfigError(f"{self.key}: expected the name of a {self.kind}; received {type(name).__name__} "
                              f"{quoted(name)}")
        if name not in self._entries:
            load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            names = sorted(self._entries)
            raise ConfigError(
                f"{self.key}: unknown {self.kind} {quoted(name)}{did_you_mean(name, names)}; "
                f"choose one of: {', '.join(names)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered so far (plugins not loaded: modules ask this while importing)."""
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        load_plugins()
        return sorted(self._entries.items())

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)
