"""Plugins: a package installed beside layerwise adds a model family and a tool through the entry-point
group ``layerwise.plugins``; a config uses the family by name and the CLI has the tool as a verb. The package is really installed (pip, into a
folder put on the subprocesses' path), and layerwise runs as a real CLI subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_one_line_error, cli_command, cli_env, quick_train, run_dirs, write_yaml

PLUGIN = Path(__file__).parent / "plugins" / "layerwise_toy"


def _install(package: Path, target: Path) -> None:
    """pip-install ``package`` into ``target`` (no dependencies: layerwise and torch are already there),
    building from a copy: setuptools leaves build/ and .egg-info/ beside the sources."""
    source = target.parent / f"{package.name}-source"
    shutil.copytree(package, source)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def _cli(*args, cwd: Path, site: Path | None) -> tuple[int, str, str]:
    env = cli_env()
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(cli_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("plugin") / "site"
    _install(PLUGIN, target)
    return target


def test_a_plugin_family_trains_from_yaml_and_is_listed(site, tmp_path):
    config = write_yaml(tmp_path / "toy.yaml", {"name": "toy", "data": {"source": "builtin", "name": "iris"},
                                                "model": {"family": "toy_linear", "scale": 0.5},
                                                "train": quick_train(epochs=3, lr=0.05)})
    code, out, err = _cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet", cwd=tmp_path, site=site)
    assert code == 0, err
    (run,) = run_dirs(tmp_path / "runs")
    assert "family: toy_linear" in (run / "config.yaml").read_text() and "scale: 0.5" in (run / "config.yaml").read_text()
    # a later process loads the run: the family comes back through the plugin, found on first lookup
    code, out, err = _cli("evaluate", run, "--json", cwd=tmp_path, site=site)
    assert code == 0 and '"accuracy"' in out, err
    code, out, err = _cli("models", cwd=tmp_path, site=site)
    assert code == 0 and "toy_linear" in out, err
    # the plugin's tool is a verb of its own, with its declared option, and listed by `layerwise tools`
    code, out, err = _cli("weight-norm", run, "--decimals", "2", cwd=tmp_path, site=site)
    assert code == 0, err
    norm = float(out.strip())
    assert norm > 0 and round(norm, 2) == norm
    code, out, err = _cli("tools", cwd=tmp_path, site=site)
    assert code == 0 and "weight-norm" in out and "explain" in out, err


def test_without_the_plugin_the_family_is_unknown_in_one_line(tmp_path):
    config = write_yaml(tmp_path / "toy.yaml", {"data": {"source": "builtin", "name": "iris"},
                                                "model": {"family": "toy_linear"}})
    code, _out, err = _cli("train", config, cwd=tmp_path, site=None)
    assert_one_line_error(code, err, "model.family: unknown model family 'toy_linear'")


def test_a_broken_plugin_is_named_in_one_line(tmp_path):
    package = tmp_path / "broken"
    package.mkdir()
    (package / "pyproject.toml").write_text(
        (PLUGIN / "pyproject.toml").read_text().replace("layerwise-toy-plugin", "layerwise-broken-plugin")
        .replace('toy = "layerwise_toy"', 'broken = "layerwise_broken"').replace('"layerwise_toy"', '"layerwise_broken"'))
    (package / "layerwise_broken.py").write_text("import a_module_that_is_not_installed  # noqa: F401\n")
    _install(package, tmp_path / "site")
    config = write_yaml(tmp_path / "toy.yaml", {"data": {"source": "builtin", "name": "iris"},
                                                "model": {"family": "toy_linear"}})
    code, _out, err = _cli("train", config, cwd=tmp_path, site=tmp_path / "site")
    assert_one_line_error(code, err, "plugin 'broken' (layerwise_broken", "ModuleNotFoundError",
                          "a_module_that_is_not_installed")
