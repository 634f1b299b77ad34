"""Benchmarks: ``ondevice bench gelato`` (trace recording, trace-driven simulation on hardware
profiles, real runs over loopback) and the report they share.

Public surface: traces (``Trace``, ``record_trace``), the simulator (``run_sim_bench``,
``CostModel``, profiles), the real runner (``run_real_bench``) and the report
(``BenchRow``, ``evaluate_targets``, table, JSON, PNG). See docs/gelato.md.

Importing ``ondevice.bench`` (or one of its light modules, as ``ondevice --help`` does to list
profiles) loads nothing heavy: each name below is imported from its module on first use
(PEP 562 module ``__getattr__``), so llama.cpp, numpy and matplotlib come only with the
benchmark that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ondevice.bench._hardware import (
        CostModel,
        DeviceProfile,
        EdgeProfile,
        load_profile,
        profile_names,
    )
    from ondevice.bench._specs import BenchConfig, PolicySpec
    from ondevice.bench.gelato_real import RealConfig, run_real_bench
    from ondevice.bench.gelato_sim import SimBench, Tally, run_sim_bench
    from ondevice.bench.report import BenchRow, evaluate_targets, format_table, tps_at_energy
    from ondevice.bench.trace import DEFAULT_PROMPTS, Trace, record_trace

_HOME = {
    "ondevice.bench._hardware": ("CostModel", "DeviceProfile", "EdgeProfile", "load_profile",
                                 "profile_names"),
    "ondevice.bench._specs": ("BenchConfig", "PolicySpec"),
    "ondevice.bench.gelato_real": ("RealConfig", "run_real_bench"),
    "ondevice.bench.gelato_sim": ("SimBench", "Tally", "run_sim_bench"),
    "ondevice.bench.report": ("BenchRow", "evaluate_targets", "format_table", "tps_at_energy"),
    "ondevice.bench.trace": ("DEFAULT_PROMPTS", "Trace", "record_trace"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}

__all__ = [  # the names of _HOME, spelt out for readers and linters
    "DEFAULT_PROMPTS", "BenchConfig", "BenchRow", "CostModel", "DeviceProfile", "EdgeProfile",
    "PolicySpec", "RealConfig", "SimBench", "Tally", "Trace", "evaluate_targets",
    "format_table", "load_profile", "profile_names", "record_trace", "run_real_bench",
    "run_sim_bench", "tps_at_energy",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'ondevice.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
