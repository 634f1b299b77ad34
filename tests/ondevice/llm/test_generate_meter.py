"""``ondevice generate --meter``: energy measured by an emulated UM25C on a real pty."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hw"))
from hw_emulators import PolledDevice, PtyPort, Trace, um_corrupt, um_frame

from ondevice.common.llama_runtime import LlamaConfig
from ondevice.llm.generate import GenerateRequest, generate
from ondevice.llm.policies import FixedPolicy

# The driver polls at 25 Hz; a 0.3-1 s window integrated by trapezoid from 40 ms samples of a
# smooth trace with one 1.5 W step errs by at most ~1.5 W x 40 ms / 2 per step edge.
REL_TOL = 0.05


@pytest.mark.parametrize("policy_name", ["fixed", "device-only"])
async def test_generate_energy_is_measured(
    policy_name: str, tmp_path: Path, fixture_models: tuple[Path, Path], edge
) -> None:
    trace = Trace(steps=((0.2, 0.5, 1.5),))
    port = PtyPort(str(tmp_path / "ttyUM25C"))
    port.plug()
    device = PolledDevice(
        port, request=b"\xf0",
        encode=lambda t: um_frame("um25c", trace.voltage_v, trace.current_a(t)),
        corrupt=um_corrupt,
    )
    with device:
        from ondevice.llm.policies import make_policy

        policy = make_policy(policy_name, gamma=3) if policy_name != "fixed" else FixedPolicy(3)
        report = await generate(
            str(fixture_models[1]),
            GenerateRequest(prompt="measure me", max_tokens=200),
            policy,
            edge_url=edge.url if policy_name == "fixed" else None,
            meter_spec=f"um25c:{port.path},poll_hz=25,timeout_s=0.2",
            llama_config=LlamaConfig(n_ctx=512, n_threads=1),
        )
    t0, t1 = report.window_monotonic_s
    assert report.energy_source == "measured" and report.meter == "um25c"
    assert report.meter_coverage > 0.9
    assert report.energy_j == pytest.approx(trace.energy_j(t0, t1), rel=REL_TOL)
    assert report.mean_power_w == pytest.approx(report.energy_j / (t1 - t0))
