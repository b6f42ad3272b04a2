"""The smallest complete example of each extension point (examples/extending/, linked from
docs/architecture.md) runs as a user would run it, in a subprocess, and passes its own check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_env

EXTENDING = Path(__file__).resolve().parents[1] / "examples" / "extending"
POINTS = ("family", "source", "kind", "task", "tool", "callback", "strategy")


def test_every_extension_point_has_an_example():
    assert {p.stem for p in EXTENDING.glob("*.py")} == set(POINTS)


@pytest.mark.parametrize("point", POINTS)
def test_extension_example_runs(point, tmp_path):
    done = subprocess.run([sys.executable, str(EXTENDING / f"{point}.py"), "--runs-dir", str(tmp_path / "runs")],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip()  # each prints what it showed
