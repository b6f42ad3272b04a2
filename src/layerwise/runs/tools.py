"""Where ``Run`` finds the tools (post-training verbs) without importing the layer above it.

Each module of ``layerwise.tools`` marks its entry points with :func:`tool_function`; importing
``layerwise`` imports every tool, so by the time a ``Run`` method asks for ``tool("explain_run")``
the entry is there.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from ..core.registry import Registry

__all__ = ["TOOL_FUNCTIONS", "tool", "tool_function"]

F = TypeVar("F", bound=Callable)

TOOL_FUNCTIONS: Registry[Callable] = Registry("tool function", key="tool")


def tool_function(function: F) -> F:
    """Register a tool's entry point under its own name: ``@tool_function def explain_run(run, ...)``."""
    TOOL_FUNCTIONS.register(function.__name__)(function)
    return function


def tool(name: str) -> Callable:
    """The entry point registered as ``name``."""
    return TOOL_FUNCTIONS.get(name)
