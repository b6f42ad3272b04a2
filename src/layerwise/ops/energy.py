"""Energy and CO2 accounting of a piece of work (a training run, a benchmark, a compression pass).

Three ways to measure, from the most to the least trustworthy:

* ``rapl``: the CPU packages' own energy counters (Intel RAPL, also exposed for AMD) under Linux
  powercap, ``/sys/class/powercap/intel-rapl:N/energy_uj``, read at the start and end (and polled in
  between so that a counter wrap is never missed). Exact for the CPU packages and free, but it counts
  the whole machine, not only this process, and it is often readable by root only.
* ``codecarbon``: CodeCarbon's ``OfflineEmissionsTracker`` (Courty et al., mlco2/codecarbon), which
  models CPU power from load and TDP, RAM from its size and GPUs through NVML. No network. Starting it
  costs 1.6-2.6 s and a background thread, so it is used only when asked for.
* ``estimate``: the process's CPU time times :data:`CPU_WATTS_PER_CORE`, a rough figure, good to a
  factor of about 2-3.

On CUDA, rapl and estimate add the GPU's own energy counter read through NVML (``pynvml``), which is
exact for the board but also counts other processes on the same GPU.

CO2 is energy times a grid carbon intensity: the world average :data:`WORLD_CO2_KG_PER_KWH` (475 g/kWh,
IEA 2019, the figure CodeCarbon falls back to) unless a country (ISO 3166 alpha-3, e.g. ``"FRA"``) is
given, whose intensity then comes from CodeCarbon's bundled energy-mix table.

>>> with EnergyMeter("cpu") as meter:       # doctest: +SKIP
...     train_something()
>>> meter.result["energy_kwh"], meter.result["method"]   # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError, require

__all__ = [
    "CPU_WATTS_PER_CORE",
    "METHODS",
    "POWERCAP_ROOT",
    "WORLD_CO2_KG_PER_KWH",
    "EnergyMeter",
    "carbon_intensity",
    "describe",
    "read_rapl_zones",
]

METHODS = ("auto", "rapl", "codecarbon", "estimate", "off")
# Watts drawn by one fully busy core: server parts run 4-7 W per core at TDP (e.g. 280 W / 64 cores),
# desktop and laptop parts 6-15 W; 10 W sits between them. The estimate is good to a factor of ~2-3.
CPU_WATTS_PER_CORE = 10.0
WORLD_CO2_KG_PER_KWH = 0.475  # IEA Global Energy & CO2 Status Report 2019; CodeCarbon's world average
POWERCAP_ROOT = Path("/sys/class/powercap")
RAPL_POLL_S = 30.0  # a package at 200 W wraps a 262 kJ counter in ~20 min: poll well inside that
_J_PER_KWH = 3.6e6


# -- RAPL (Linux powercap) ---------------------------------------------------------------------
def read_rapl_zones(root: str | Path = POWERCAP_ROOT) -> dict[str, tuple[int, int]]:
    """``{zone: (energy_uj, max_energy_range_uj)}`` for each top-level RAPL zone (one per CPU package).

    Sub-zones (``intel-rapl:0:0`` core, uncore, dram) are parts of a package and would count twice;
    ``psys`` (the whole platform) overlaps the packages, so it is skipped too. Empty when unreadable.
    """
    zones: dict[str, tuple[int, int]] = {}
    root = Path(root)
    try:
        candidates = sorted(root.glob("intel-rapl:*"))
    except OSError:
        return zones
    for zone in candidates:
        if zone.name.count(":") != 1:
            continue
        try:
            if (zone / "name").is_file() and (zone / "name").read_text().strip() == "psys":
                continue
            energy = int((zone / "energy_uj").read_text())
            wrap = int((zone / "max_energy_range_uj").read_text())
        except (OSError, ValueError):  # root-only on most kernels since 5.10 (PLATYPUS)
            continue
        zones[zone.name] = (energy, wrap)
    return zones


def _rapl_delta(before: int, after: int, wrap: int) -> int:
    """Microjoules between two readings of a counter that restarts from 0 after ``wrap``."""
    return after - before if after >= before else after + wrap - before


def carbon_intensity(country: str | None) -> tuple[float, str]:
    """(kg CO2 per kWh, where the figure comes from) for an ISO alpha-3 country, or the world average."""
    if country is None:
        return WORLD_CO2_KG_PER_KWH, "world average 475 g/kWh (IEA 2019)"
    try:
        import codecarbon
    except ImportError:
        return WORLD_CO2_KG_PER_KWH, f"world average 475 g/kWh (IEA 2019; install layerwise[energy] for {country})"
    table = Path(codecarbon.__file__).parent / "data" / "private_infra" / "global_energy_mix.json"
    try:
        mix = json.loads(table.read_text())
    except (OSError, ValueError):
        return WORLD_CO2_KG_PER_KWH, "world average 475 g/kWh (IEA 2019; CodeCarbon's table unreadable)"
    entry = mix.get(country.upper())
    if entry is None or entry.get("carbon_intensity") is None:
        raise ConfigError(f"train.energy_country: '{country}' is not in CodeCarbon's energy-mix table; "
                          f"use an ISO 3166 alpha-3 code such as USA, FRA, DEU, or leave it empty for the world average")
    source = f"{entry['country_name']} {entry['carbon_intensity']:.0f} g/kWh (CodeCarbon, {entry.get('year', 'n.d.')})"
    return float(entry["carbon_intensity"]) / 1000.0, source


# -- GPU (NVML) --------------------------------------------------------------------------------
class _GpuCounter:
    """The board's total-energy counter (millijoules since the driver loaded; Volta and later)."""

    def __init__(self, device: torch.device):
        self.handle = None
        self.problem = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            try:  # CUDA and NVML may number GPUs differently (CUDA_VISIBLE_DEVICES): match the PCI bus
                bus = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
                self.handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus)
            except Exception:  # noqa: BLE001 - NVMLError or an older torch without the PCI fields
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
            self.start = self._read()
        except Exception as exc:  # noqa: BLE001 - no pynvml, no driver, or a board without the counter
            self.handle, self.problem = None, f"GPU energy not counted ({type(exc).__name__}: {exc})"[:160]

    def _read(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def joules(self) -> float | None:
        if self.handle is None:
            return None
        try:
            return (self._read() - self.start) / 1000.0
        except Exception:  # noqa: BLE001 - a driver reset mid-run: report the GPU as not counted
            return None


# -- the meter ---------------------------------------------------------------------------------
class EnergyMeter:
    """Measure the energy (kWh) and CO2 (kg) of a block of work.

    ``with EnergyMeter(device) as meter: ...`` then ``meter.result``: ``duration_s``, ``device``,
    ``method`` (rapl, codecarbon, estimate or none), ``energy_kwh``, ``co2_kg`` and a ``note`` saying
    what was measured and how far to trust it. ``method="auto"`` uses RAPL when readable, else the
    estimate; CodeCarbon only when named (it costs ~2 s to start). :meth:`read` gives the figures so
    far without stopping.
    """

    def __init__(self, device: torch.device | str = "cpu", method: str = "auto", *, country: str | None = None,
                 powercap_root: str | Path = POWERCAP_ROOT):
        if method not in METHODS or method == "off":
            raise ConfigError(f"train.energy: '{method}' is not a measuring method; use auto, rapl, codecarbon, "
                              f"estimate (or off to record nothing)")
        self.device = torch.device(device)
        self.requested = method
        self.country = country
        self.powercap_root = Path(powercap_root)
        self.kg_per_kwh, self.intensity_note = carbon_intensity(country)
        if method == "rapl" and not read_rapl_zones(self.powercap_root):
            raise ConfigError(f"train.energy: 'rapl' needs readable {self.powercap_root}/intel-rapl:*/energy_uj "
                              f"(often root-only); use auto or estimate")
        self.method = "none"
        self.result: dict[str, Any] = {}
        self._started: float | None = None

    def __enter__(self) -> EnergyMeter:  # noqa: PYI034 - Self needs Python 3.11
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> EnergyMeter:
        """Pick the method (for auto) and take the first readings."""
        self._rapl_uj = 0
        self._rapl_last: dict[str, tuple[int, int]] = {}
        self._tracker = None
        self._gpu = None
        method = self.requested
        if method in ("auto", "rapl"):
            self._rapl_last = read_rapl_zones(self.powercap_root)
            if self._rapl_last:
                method = "rapl"
            elif method == "rapl":
                raise ConfigError(f"train.energy: 'rapl' needs readable {self.powercap_root}/intel-rapl:*/energy_uj "
                                  f"(often root-only); use auto or estimate")
            else:
                method = "estimate"
        if method == "codecarbon":
            self._tracker = self._start_codecarbon()
        if method in ("rapl", "estimate") and self.device.type == "cuda":
            self._gpu = _GpuCounter(self.device)
        self.method = method
        self._cpu0 = time.process_time()
        self._started = self._last_poll = time.perf_counter()
        return self

    def _start_codecarbon(self):
        require("codecarbon", "energy")
        import codecarbon.emissions_tracker
        from codecarbon import OfflineEmissionsTracker

        # codecarbon logs at INFO while it builds, before its own log_level applies
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        options: dict[str, Any] = {"country_iso_code": (self.country or "USA").upper(), "log_level": "error",
                                   "tracking_mode": "process", "allow_multiple_runs": True, "project_name": "layerwise"}
        # no CSV, API or logger output: recent versions take output_methods, older ones save_to_file
        base = inspect.signature(codecarbon.emissions_tracker.BaseEmissionsTracker.__init__).parameters
        options.update({"output_methods": []} if "output_methods" in base else {"save_to_file": False})
        if self.device.type == "cuda":
            options["gpu_ids"] = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        tracker = OfflineEmissionsTracker(**options)
        tracker.start()
        return tracker

    def poll(self) -> None:
        """Fold the RAPL counters' progress into the total (call at least every few minutes: wraps)."""
        if self.method != "rapl":
            return
        now = read_rapl_zones(self.powercap_root)
        for zone, (energy, wrap) in now.items():
            if zone in self._rapl_last:
                self._rapl_uj += _rapl_delta(self._rapl_last[zone][0], energy, wrap)
        self._rapl_last = now or self._rapl_last
        self._last_poll = time.perf_counter()

    def poll_if_due(self) -> None:
        """:meth:`poll` when :data:`RAPL_POLL_S` have passed (cheap to call every batch)."""
        if self.method == "rapl" and time.perf_counter() - self._last_poll >= RAPL_POLL_S:
            self.poll()

    def read(self) -> dict[str, Any]:
        """The figures so far, without stopping (CodeCarbon's energy is known only at :meth:`stop`)."""
        if self._started is None:
            raise RuntimeError("EnergyMeter.read() before start()")
        self.poll()
        duration = time.perf_counter() - self._started
        joules: float | None
        notes: list[str] = []
        if self.method == "rapl":
            joules = self._rapl_uj / 1e6
            notes.append(f"CPU packages measured by RAPL ({', '.join(sorted(self._rapl_last))}), the whole machine "
                         f"and not only this process; RAM not counted")
        elif self.method == "estimate":
            cpu_s = time.process_time() - self._cpu0
            joules = cpu_s * CPU_WATTS_PER_CORE
            notes.append(f"estimate: {cpu_s:.3g} CPU-seconds x {CPU_WATTS_PER_CORE:g} W per busy core, good to a "
                         f"factor of ~2-3; idle power and RAM not counted")
        else:
            joules = None
            notes.append("CodeCarbon: energy known at the end of the session")
        if self._gpu is not None:
            gpu = self._gpu.joules()
            if gpu is not None and joules is not None:
                joules += gpu
                notes.append(f"GPU {gpu / _J_PER_KWH:.3g} kWh from its NVML energy counter (whole board)")
            else:
                notes.append(self._gpu.problem or "GPU energy counter unreadable; GPU not counted")
        energy = None if joules is None else joules / _J_PER_KWH
        notes.append(f"CO2 at {self.intensity_note}")
        return self._result(duration, energy, None if energy is None else energy * self.kg_per_kwh, "; ".join(notes))

    def stop(self) -> dict[str, Any]:
        """Take the last readings; returns (and keeps in ``result``) the result dict."""
        if self._started is None:
            raise RuntimeError("EnergyMeter.stop() before start()")
        if self.method != "codecarbon":
            self.result = self.read()
        else:
            duration = time.perf_counter() - self._started
            emissions = self._tracker.stop()
            data = getattr(self._tracker, "final_emissions_data", None)
            energy = None if data is None else float(data.energy_consumed)
            if energy is None:
                co2 = None
            elif self.country is None:
                co2 = energy * self.kg_per_kwh  # the country codecarbon needs is a placeholder: use the world's
            else:
                co2 = float(emissions) if emissions is not None else energy * self.kg_per_kwh
            note = "CodeCarbon (offline, process mode): CPU from load x TDP, RAM from its size, GPU by NVML"
            if data is not None:
                note += f" (cpu {data.cpu_energy:.3g}, ram {data.ram_energy:.3g}, gpu {data.gpu_energy:.3g} kWh)"
            note += f"; CO2 at {self.intensity_note if self.country is None else self.country + ' (CodeCarbon)'}"
            self.result = self._result(duration, energy, co2, note)
        self._started = None
        return self.result

    def _result(self, duration: float, energy: float | None, co2: float | None, note: str) -> dict[str, Any]:
        return {"duration_s": duration, "device": str(self.device), "method": self.method if energy is not None
                or self.method == "codecarbon" else "none", "energy_kwh": energy, "co2_kg": co2, "note": note}


def describe(result: dict[str, Any] | None) -> str:
    """One line for a report or a console: ``0.0012 kWh, 0.57 g CO2 (estimate, 12.3 s on cpu)``."""
    if not result:
        return "not measured (train.energy: off)"
    if result.get("energy_kwh") is None:
        return f"not measured ({result.get('note', 'no method available')})"
    co2 = result.get("co2_kg")
    co2_text = "" if co2 is None else f", {co2 * 1000:.3g} g CO2"
    return (f"{result['energy_kwh']:.3g} kWh{co2_text} ({result['method']}, {result['duration_s']:.1f} s on "
            f"{result['device']})")

