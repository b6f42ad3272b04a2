"""Fuzzing the config loader: whatever a user writes, it loads or fails with one line.

The promise (core/errors.py): every error a user can cause is a LayerwiseError whose message is one
line; anything else that escapes ``load_config`` is a bug. Hypothesis writes the configs: (a) any
text, any bytes and any nesting of YAML values, with the constructs PyYAML reads badly (bad dates,
``!!int abc``, thousand-digit integers, aliases inside their own anchor, deep brackets); (b)
near-valid configs of the real schema, read from the registries (every source, family, task,
optimizer and schedule), with wrong-typed or out-of-range values at random keys, and ``--set``
overrides.

The runs are derandomized and use no example database, so CI sees the same inputs every time;
``LAYERWISE_FUZZ_EXAMPLES=3000 pytest tests/test_config_fuzz.py`` searches harder.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import cli_command, cli_env
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from layerwise import ExperimentConfig, LayerwiseError
from layerwise.core.config import (
    AdversarialConfig,
    AugmentConfig,
    CheckpointsConfig,
    EarlyStoppingConfig,
    EvaluateConfig,
    SchedulerConfig,
    TrainConfig,
)
from layerwise.data import SOURCES
from layerwise.models import FAMILIES
from layerwise.runs.config import MOVED, load_config
from layerwise.tasks import TASKS
from layerwise.train.optim import OPTIMIZERS, SCHEDULERS
from layerwise.train.strategies import STRATEGIES

MAX_MESSAGE = 400  # characters: one line a terminal shows without scrolling far


def fuzz_settings(examples: int) -> settings:
    """``examples`` per test, or LAYERWISE_FUZZ_EXAMPLES; reproducible (derandomized, no database)."""
    return settings(max_examples=int(os.environ.get("LAYERWISE_FUZZ_EXAMPLES") or examples), deadline=None,
                    derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.data_too_large])


def check(source: Any, overrides: Any = None) -> ExperimentConfig | None:
    """The loader's promise: a config that round-trips, or a one-line LayerwiseError. Deprecation
    warnings (printed as ``warning:`` lines by the CLI) must be one line too."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = load_config(source, overrides)
        except LayerwiseError as exc:
            message = str(exc)
            assert message.strip(), f"empty message from {type(exc).__name__}"
            assert "\n" not in message and "\r" not in message, f"a message of several lines:\n{message}"
            assert len(message) <= MAX_MESSAGE, f"a message of {len(message)} characters: {message[:600]}"
            config = None
    for warning in caught:
        assert "\n" not in str(warning.message), f"a warning of several lines:\n{warning.message}"
        assert len(str(warning.message)) <= MAX_MESSAGE, f"a warning of {len(str(warning.message))} characters"
    if config is not None:
        assert isinstance(config, ExperimentConfig)
        assert load_config(config.to_dict()) == config, "an accepted config does not round-trip"
    return config


# -- values ------------------------------------------------------------------------------------

NASTY = [
    2**70, -(2**70), 2**63, 2**32, -1, 0, 1, 10**400, 1e308, -1e308, 5e-324, -0.0, float("inf"), float("-inf"),
    float("nan"), "", " ", "\t", "\n", "a\nb", "é", "日本語", "\u202e", "\x00", "'", '"', "{", "[", ":", "#", "~",
    "none", "null", "yes", "off", "0x1F", "1e3", ".nan", "-", "cnn\n", "a" * 300, True, False, None, [], {},
    [None], [[]], {"": None}, {"name": None}, [2**70], [float("nan")],
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.sampled_from(NASTY),
    st.integers(-3, 3), st.floats(-2, 2), st.dates(),
)
keys = st.one_of(st.text(max_size=12), st.sampled_from(["name", "family", "source", "epochs", "", "a.b", "a\nb"]),
                 st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=16)


def nested(depth: int, leaf: Any = 1) -> Any:
    """A list ``depth`` levels deep (a deep dict when ``leaf`` is a dict key)."""
    value: Any = leaf
    for _ in range(depth):
        value = [value]
    return value


deep = st.integers(1, 4000).map(nested)


# -- (a) any YAML text ---------------------------------------------------------------------------

SECTIONS = ["name", "data", "model", "task", "train", "evaluate"]
# constructs PyYAML reads badly, or that look like values of another type
FRAGMENTS = [
    "!!int abc", "!!float x", "!!bool maybe", "!!timestamp x", "2020-13-45", "2020-02-30", "0000-01-01", "12:30:61",
    "190:20:30", "0b102", "0o9", "1_000", "&a [*a]", "&a {x: *a}", "&a [*a, *a]", "*undefined", "!!binary ~~~",
    "!!python/object/apply:os.system [ls]", "!!set {a, b}", "!!omap [a: 1, b: 2]", "!!pairs [[1, 2]]",
    "!!str", "!!null x", "!!map [1]", "!!seq {a: 1}", "1" * 5000, "-" + "9" * 4400, "9" * 4200 + ".5",
    "1e99999", "-.inf", ".NaN", "'", '"\\x"', '"\\ud800"', "{a: 1, a: 2}", "[" * 400 + "]" * 400,
    "{a: " * 300 + "1" + "}" * 300, "<<: {x: 1}", "? [1, 2]\n  : 3", "|\n    multi\n    line", ">\n    folded",
    "\ufeff", "!custom 1", "%YAML 1.2",
]


def dump(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)


yaml_texts = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="[]{}:,-?!&*#|>'\"\n 0123456789.abcnul~%@`", max_size=200),
    values.map(dump),
    st.dictionaries(st.sampled_from(SECTIONS), values, max_size=5).map(dump),
    st.builds(lambda section, key, fragment: f"{section}:\n  {key}: {fragment}\n",
              st.sampled_from(SECTIONS), st.sampled_from(["family", "source", "epochs", "lr", "x"]),
              st.sampled_from(FRAGMENTS)),
    st.builds(lambda section, fragment: f"{section}: {fragment}\n", st.sampled_from(SECTIONS),
              st.sampled_from(FRAGMENTS)),
    st.sampled_from(FRAGMENTS),
    # PyYAML's stack gives out near 300 levels
    st.integers(1, 400).map(lambda n: "train: " + "[" * n + "]" * n + "\n"),
    st.integers(1, 400).map(lambda n: "data:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(n))),
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@fuzz_settings(300)
@given(text=yaml_texts)
def test_any_yaml_text_loads_or_fails_with_one_line(folder, text):
    path = folder / "config.yaml"
    path.write_text(text, encoding="utf-8")
    check(path)


@fuzz_settings(60)
@given(data=st.binary(max_size=200))
def test_any_bytes_load_or_fail_with_one_line(folder, data):
    path = folder / "config.yaml"
    path.write_bytes(data)
    check(path)


@fuzz_settings(200)
@given(raw=st.one_of(values, st.dictionaries(st.sampled_from(SECTIONS) | keys, values | deep, max_size=5), deep))
def test_any_nesting_of_values_loads_or_fails_with_one_line(raw):
    check(raw)


# -- (b) near-valid configs of the real schema -----------------------------------------------------


def fields(schema: type[BaseModel], *prefix: str) -> list[tuple[str, ...]]:
    return [(*prefix, key) for key in schema.model_fields]


def example_value(field) -> Any:
    """A plausible value for a required field, so that validation goes on to the keys after it."""
    text = str(field.annotation)
    return "x" if "str" in text else 0.1 if "float" in text else 1


def required(schema: type[BaseModel]) -> dict[str, Any]:
    return {key: example_value(f) for key, f in schema.model_fields.items() if f.is_required()}


# the name slots, and the keys every config has
NAME_PATHS = [("data", "source"), ("model", "family"), ("task", "name"), ("train", "optimizer"),
              ("train", "scheduler", "name"), ("train", "strategy"), ("name",)]
COMMON_PATHS = [
    *NAME_PATHS, *fields(AugmentConfig, "data", "augment"), *fields(TrainConfig, "train"),
    *fields(SchedulerConfig, "train", "scheduler"), *fields(EarlyStoppingConfig, "train", "early_stopping"),
    *fields(CheckpointsConfig, "train", "checkpoints"), *fields(EvaluateConfig, "evaluate"),
    *fields(AdversarialConfig, "task", "adversarial_training"), *[(m.section, m.key) for m in MOVED],
    *fields(AdversarialConfig, "train", "adversarial"), ("task",), ("data",), ("model",), ("train",), ("evaluate",),
    ("train", "scheduler"), ("train", "early_stopping"), ("data", "augment"),
]
ALL_NAMES = [*SOURCES.names(), *FAMILIES.names(), *TASKS.names(), *OPTIMIZERS.names(), *SCHEDULERS.names(),
             *STRATEGIES.names()]

wrong_values = st.one_of(
    st.sampled_from(NASTY), st.sampled_from(ALL_NAMES), scalars, values, st.integers(-2, 3), st.floats(-1.5, 1.5),
    st.lists(st.integers(-2, 64), max_size=4), st.lists(st.text(max_size=5), max_size=3),
    st.integers(1, 600).map(nested),
)


def set_path(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if isinstance(child, str):  # a shorthand (`task: vae`, `scheduler: cosine`) becomes its mapping
            child = {"name": child}
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[path[-1]] = value


@st.composite
def near_valid(draw) -> dict[str, Any]:
    """A config of real names with their required keys, then wrong values at one to three keys."""
    source, family = draw(st.sampled_from(SOURCES.names())), draw(st.sampled_from(FAMILIES.names()))
    raw: dict[str, Any] = {"data": {"source": source, **required(SOURCES.get(source).Config)},
                           "model": {"family": family, **required(FAMILIES.get(family).Config)},
                           "train": {"optimizer": draw(st.sampled_from(OPTIMIZERS.names())),
                                     "scheduler": draw(st.sampled_from(SCHEDULERS.names()))}}
    task = draw(st.none() | st.sampled_from(TASKS.names()))
    if task is not None:
        raw["task"] = draw(st.sampled_from([task, {"name": task}]))
    paths = [*COMMON_PATHS, *fields(SOURCES.get(source).Config, "data"), *fields(FAMILIES.get(family).Config, "model"),
             *(fields(TASKS.get(task).Config, "task") if task else [])]
    moved = [(m.section, m.key) for m in MOVED]  # one in three: a deprecated spelling, moved before validation
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(paths) | st.sampled_from(paths) | st.sampled_from(moved))
        set_path(raw, path, draw(wrong_values))
    return raw


DOTTED = sorted({".".join(p) for p in COMMON_PATHS}
                | {f"data.{k}" for _, cls in SOURCES.items() for k in cls.Config.model_fields}
                | {f"model.{k}" for _, cls in FAMILIES.items() for k in cls.Config.model_fields}
                | {f"task.{k}" for _, cls in TASKS.items() for k in cls.Config.model_fields})


def flow(value: Any) -> str:
    """A value as it is written after ``--set KEY=``."""
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True)
    except RecursionError:
        return "[" * 2000
    return text.strip().removesuffix("...").strip()


override = st.one_of(
    st.builds(lambda key, value: f"{key}={value}", st.sampled_from(DOTTED), wrong_values.map(flow)),
    st.builds(lambda key, value: f"{key}={value}", st.sampled_from(DOTTED), st.text(max_size=20)),
    st.builds(lambda key, fragment: f"{key}={fragment}", st.sampled_from(DOTTED), st.sampled_from(FRAGMENTS)),
    st.builds(lambda key, value: f"{key}={value}", st.text(max_size=15), st.text(max_size=15)),
    st.sampled_from(["", "=", "=1", "train.epochs", ".=1", "..=1", "train..epochs=1", "train.epochs.x=1",
                     "name.x=1", "task.name.x=1", "train__epochs=2", " = ", "a\nb=1", "train.a\nb=1"]),
    st.text(max_size=30),
)


# layerwise.train(config, train__epochs=3): keyword overrides
keyword_overrides = st.dictionaries(
    st.sampled_from(DOTTED).map(lambda key: key.replace(".", "__")) | st.text(max_size=10), wrong_values, max_size=3)


@fuzz_settings(400)
@given(raw=near_valid(), overrides=st.lists(override, max_size=3) | keyword_overrides)
def test_near_valid_configs_load_or_fail_with_one_line(raw, overrides):
    check(raw, overrides)


@fuzz_settings(150)
@given(raw=near_valid())
def test_near_valid_yaml_files_load_or_fail_with_one_line(folder, raw):
    path = folder / "near.yaml"
    try:
        text = dump(raw)
    except RecursionError:  # deeper than PyYAML itself can write
        return
    path.write_text(text, encoding="utf-8")
    check(path)


@fuzz_settings(150)
@given(overrides=st.lists(override, min_size=1, max_size=4))
def test_overrides_of_the_default_load_or_fail_with_one_line(overrides):
    check(None, overrides)


# -- the real CLI --------------------------------------------------------------------------------


def generated(strategy: st.SearchStrategy, count: int) -> list[Any]:
    """``count`` values of ``strategy``, the same on every run."""
    found: list[Any] = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate])
    @given(strategy)
    def collect(value):
        found.append(value)

    collect()
    return found[:count]


@pytest.mark.slow  # three CLI processes, each seconds of importing torch
def test_cli_config_exits_0_or_2_with_one_error_line(tmp_path):
    texts = [
        "",  # empty: an error now, not the default CNN
        "name: 2020-13-45\n",  # escaped PyYAML as a ValueError
        *map(dump, generated(near_valid(), 1)),
    ]
    # in parallel: each process spends seconds importing torch
    procs = []
    for i, text in enumerate(texts):
        path = tmp_path / f"config{i}.yaml"
        path.write_text(text, encoding="utf-8")
        procs.append(subprocess.Popen(cli_command("config", path), cwd=tmp_path, env=cli_env(), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for text, proc in zip(texts, procs):
        out, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, f"{text[:200]!r}:\n{err}"
        lines = err.strip("\n").splitlines()
        if proc.returncode == 0:
            assert all(line.startswith("warning: ") for line in lines), err
            assert isinstance(yaml.safe_load(out), dict)
        else:
            assert proc.returncode == 2, f"{text[:200]!r}: exit code {proc.returncode}; stderr:\n{err}"
            assert len(lines) == 1 and lines[0].startswith("error: "), err
