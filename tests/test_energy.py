"""Energy accounting: the RAPL reader on a real-format powercap tree, the CPU-time estimate, and the
energy recorded in every training run (metrics.json, report, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_one_line_error, cli, quick_train, run_dirs, tiny_mlp, write_yaml

import layerwise
from layerwise.core.errors import ConfigError
from layerwise.ops.energy import CPU_WATTS_PER_CORE, EnergyMeter, read_rapl_zones

KEYS = {"duration_s", "device", "method", "energy_kwh", "co2_kg", "note"}


def _zone(root: Path, name: str, label: str, energy: int, wrap: int) -> Path:
    zone = root / name
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy}\n")
    (zone / "max_energy_range_uj").write_text(f"{wrap}\n")
    return zone


def _set(zone: Path, energy: int) -> None:
    (zone / "energy_uj").write_text(f"{energy}\n")


def test_rapl_reads_packages_only_and_survives_a_wrap(tmp_path):
    root = tmp_path / "powercap"
    pkg0 = _zone(root, "intel-rapl:0", "package-0", 1_000_000, 10_000_000)
    pkg1 = _zone(root, "intel-rapl:1", "package-1", 9_000_000, 10_000_000)
    _zone(root, "intel-rapl:0:0", "core", 500, 10_000_000)  # part of package 0: must not count twice
    _zone(root, "intel-rapl:2", "psys", 0, 10_000_000)  # the whole platform overlaps the packages
    (root / "intel-rapl").mkdir()  # the control-type folder has no counter
    assert set(read_rapl_zones(root)) == {"intel-rapl:0", "intel-rapl:1"}

    meter = EnergyMeter("cpu", "rapl", powercap_root=root).start()
    assert meter.method == "rapl"
    _set(pkg0, 4_000_000)  # +3 J
    _set(pkg1, 2_000_000)  # wrapped: 9 -> 10 -> 0 -> 2, i.e. +3 J
    meter.poll()
    _set(pkg0, 5_000_000)  # +1 J
    result = meter.stop()
    assert set(result) == KEYS and result["method"] == "rapl"
    assert result["energy_kwh"] == pytest.approx(7.0 / 3.6e6)
    assert result["co2_kg"] == pytest.approx(7.0 / 3.6e6 * 0.475)
    assert "RAPL" in result["note"]


def test_auto_falls_back_to_the_estimate_without_powercap(tmp_path):
    meter = EnergyMeter("cpu", "auto", powercap_root=tmp_path / "missing").start()
    assert meter.method == "estimate"
    meter.stop()
    with pytest.raises(ConfigError, match="train.energy: 'rapl'"):
        EnergyMeter("cpu", "rapl", powercap_root=tmp_path / "missing")


def _work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def test_estimate_is_positive_and_grows_with_cpu_work(tmp_path):
    results = []
    for n in (20_000, 2_000_000):
        with EnergyMeter("cpu", "estimate") as meter:
            _work(n)
        results.append(meter.result)
    small, large = results
    assert set(large) == KEYS and large["method"] == "estimate"
    assert 0 < small["energy_kwh"] < large["energy_kwh"]
    # a CPU-bound loop: energy ~ its CPU time x the per-core figure (CPU time <= wall time)
    assert large["energy_kwh"] <= large["duration_s"] * CPU_WATTS_PER_CORE / 3.6e6 * 1.05
    assert large["co2_kg"] == pytest.approx(large["energy_kwh"] * 0.475)


def test_country_changes_the_co2_factor_and_a_bad_one_is_named():
    pytest.importorskip("codecarbon")
    france = EnergyMeter("cpu", "estimate", country="FRA")
    assert france.kg_per_kwh < 0.2 and "France" in france.intensity_note
    with pytest.raises(ConfigError, match="train.energy_country: 'ZZZ'"):
        EnergyMeter("cpu", "estimate", country="ZZZ")


def test_codecarbon_offline_writes_no_file(tmp_path, monkeypatch):
    pytest.importorskip("codecarbon")
    monkeypatch.chdir(tmp_path)  # CodeCarbon's default output would land in the working directory
    with EnergyMeter("cpu", "codecarbon") as meter:
        _work(300_000)
    result = meter.result
    assert set(result) == KEYS and result["method"] == "codecarbon"
    assert result["energy_kwh"] > 0 and result["co2_kg"] == pytest.approx(result["energy_kwh"] * 0.475)
    assert list(tmp_path.iterdir()) == []


def _config(**train):
    return {"name": "iris", "data": {"source": "builtin", "name": "iris"}, "model": tiny_mlp(),
            "train": quick_train(**train)}


def test_training_records_energy_in_metrics_and_report(tmp_path):
    run = layerwise.train(_config(epochs=1), runs_dir=tmp_path / "runs", quiet=True)
    energy = json.loads((run.path / "metrics.json").read_text())["energy"]
    assert KEYS <= set(energy) and energy["method"] in ("rapl", "estimate")
    assert energy["energy_kwh"] > 0 and energy["co2_kg"] > 0 and energy["device"] == "cpu"
    assert energy["sessions"] == 1
    report = (run.path / "report.html").read_text()
    assert "<h2>Energy</h2>" in report
    assert "kWh" in report

    # resume for a second epoch: the recorded energy is the sum of both sessions
    resumed = layerwise.train(resume=run.path, train__epochs=2, quiet=True)
    total = resumed.metrics["energy"]
    assert total["sessions"] == 2
    assert total["energy_kwh"] > energy["energy_kwh"]
    assert total["duration_s"] > energy["duration_s"]


def test_energy_off_records_none(tmp_path):
    run = layerwise.train(_config(epochs=1, energy="off"), runs_dir=tmp_path / "runs", quiet=True)
    metrics = run.metrics
    assert "energy" in metrics and metrics["energy"] is None
    assert "not measured" in (run.path / "report.html").read_text()


def test_bad_energy_value_is_one_line_error(tmp_path):
    config = write_yaml(tmp_path / "bad.yaml", _config(energy="solar"))
    code, _, err = cli("train", config, "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert_one_line_error(code, err, "train.energy", "solar", "estimate")
    assert run_dirs(tmp_path / "runs") == []
