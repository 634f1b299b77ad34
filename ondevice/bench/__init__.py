"""Benchmarks: ``ondevice bench gelato`` (trace recording, trace-driven simulation on hardware
profiles, real runs over loopback) and the report they share.

Public surface: traces (``Trace``, ``record_trace``), the simulator (``run_sim_bench``,
``CostModel``, profiles), the real runner (``run_real_bench``) and the report
(``BenchRow``, ``evaluate_targets``, table, JSON, PNG). See docs/gelato.md.
"""

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

__all__ = [
    "DEFAULT_PROMPTS",
    "BenchConfig",
    "BenchRow",
    "CostModel",
    "DeviceProfile",
    "EdgeProfile",
    "PolicySpec",
    "RealConfig",
    "SimBench",
    "Tally",
    "Trace",
    "evaluate_targets",
    "format_table",
    "load_profile",
    "profile_names",
    "record_trace",
    "run_real_bench",
    "run_sim_bench",
    "tps_at_energy",
]
