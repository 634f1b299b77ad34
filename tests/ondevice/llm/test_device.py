"""The Python API (ondevice/llm/device.py) against a real edge-server process on 127.0.0.1.

Greedy outputs are compared with ``generate()`` (the one-shot path) and with llama-cpp-python's
own greedy decoding of the target; the long-lived state (policy queue, meter window, edge
socket) is read from the reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _edge import EdgeProc, Reference, edge_server
from _listening import free_port

from ondevice import Device, DeviceSync
from ondevice.common.llama_runtime import LlamaConfig
from ondevice.llm.generate import EdgePlan, GenerateRequest, generate
from ondevice.llm.policies import FixedPolicy, PolicyConfig

SMALL = {"n_ctx": 512, "n_threads": 1}
PROMPT = "The quick brown fox jumps"


def device(draft: Path, url: str | None, **kw: object) -> Device:
    """A Device on ``url`` only (None: the draft alone), with a small draft context."""
    return Device(draft, edge=EdgePlan(url=url), llama_config=LlamaConfig(**SMALL),
                  **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def target_ref(fixture_models: tuple[Path, Path]) -> Reference:
    ref = Reference(fixture_models[0])
    yield ref
    ref.close()


def test_import_loads_no_llama_cpp() -> None:
    code = ("import ondevice, sys; from ondevice import Device, DeviceSync; "
            "assert 'llama_cpp' not in sys.modules, 'llama_cpp loaded'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


async def test_stream_pieces_make_the_report_text(
    fixture_models: tuple[Path, Path], edge: EdgeProc, target_ref: Reference
) -> None:
    draft = fixture_models[1]
    async with device(draft, edge.url, policy=PolicyConfig("fixed", gamma=3)) as dev:
        pieces, busy_seen = [], []
        async for piece in dev.stream(PROMPT, max_tokens=40, seed=1):
            pieces.append(piece)
            busy_seen.append(dev.busy)
        report = dev.last_report
    assert report is not None and not report.degraded and report.edge == edge.url
    assert "".join(p.text for p in pieces) == report.text
    assert [t for p in pieces for t in p.tokens] == report.tokens
    assert report.tokens == target_ref.greedy(PROMPT, 40)
    assert len(pieces) >= report.rounds  # one piece per round at least, while it ran
    assert busy_seen[0], "the first piece came only after the generation ended"
    one_shot = await generate(str(draft), GenerateRequest(prompt=PROMPT, max_tokens=40, seed=1),
                              FixedPolicy(3), edge_url=edge.url,
                              llama_config=LlamaConfig(**SMALL))
    assert one_shot.text == report.text


async def test_state_lives_across_prompts(fixture_models: tuple[Path, Path],
                                          edge: EdgeProc) -> None:
    """GELATO's queue continues where the last prompt left it; one meter window; one socket."""
    async with device(fixture_models[1], edge.url,
                      policy=PolicyConfig("gelato", power_budget_w=1.0)) as dev:
        first = await dev.complete("Hello world", max_tokens=24, seed=1)
        second = await dev.complete(PROMPT, max_tokens=24, seed=2)
        assert dev.edges is not None and dev.edges.connects == 1
    assert first.policy_settings_start["queue_j"] == 0.0
    assert first.policy_settings["queue_j"] > 0.0  # idle 3.3 W (sim) > 1 W: the queue grows
    assert second.policy_settings_start == first.policy_settings
    assert first.meter_started_monotonic_s == second.meter_started_monotonic_s is not None
    assert first.meter_started_monotonic_s < first.window_monotonic_s[0]
    assert (first.edge_connects, second.edge_connects) == (1, 0)
    assert not first.degraded and not second.degraded


async def test_stop_strings_cut_the_text(fixture_models: tuple[Path, Path],
                                         edge: EdgeProc) -> None:
    async with device(fixture_models[1], edge.url, policy="fixed") as dev:
        full = await dev.complete(PROMPT, max_tokens=40, seed=1)
        stop = full.text[12:15]
        pieces = [p.text async for p in dev.stream(PROMPT, max_tokens=40, seed=1,
                                                   stop=["no such text", stop])]
        cut = dev.last_report
    assert cut is not None and cut.stop_reason == "stop"
    assert "".join(pieces) == cut.text == full.text[: full.text.index(stop)]
    assert cut.n_tokens < full.n_tokens  # it stopped generating, not just cutting the text


async def test_leaving_early_stops_the_generation(fixture_models: tuple[Path, Path],
                                                  edge: EdgeProc) -> None:
    """Breaking out (inside aclosing) ends the generation after its step; the next prompt on
    the same Device gives the same text as a fresh one."""
    async with device(fixture_models[1], edge.url, policy="fixed") as dev:
        async with contextlib.aclosing(dev.stream(PROMPT, max_tokens=400, seed=1)) as pieces:
            async for _ in pieces:
                break
        assert not dev.busy
        left = dev.last_report  # an abandoned stream reports what it generated
        assert left is not None and left.stop_reason == "interrupted" and left.n_tokens < 400
        halt = asyncio.Event()
        halt.set()
        stopped = await dev.complete(PROMPT, max_tokens=400, seed=1, halt=halt)
        assert stopped.stop_reason == "interrupted" and stopped.n_tokens == 0
        again = await dev.complete(PROMPT, max_tokens=30, seed=1)
    async with device(fixture_models[1], edge.url, policy="fixed") as fresh:
        assert (await fresh.complete(PROMPT, max_tokens=30, seed=1)).text == again.text


async def test_kept_socket_closed_by_the_edge_reconnects(
    fixture_models: tuple[Path, Path], target_ref: Reference
) -> None:
    """The edge drops the kept socket (its idle timeout, then a restart on the same port):
    the next prompt connects afresh, with no degradation and the target's text."""
    target, draft = fixture_models
    port = str(free_port())
    args = ("--n-ctx", "512", "--idle-timeout", "1", "--port", port)
    with edge_server(target, *args) as e:
        async with device(draft, e.url, policy="fixed") as dev:
            first = await dev.complete("Hello world", max_tokens=12, seed=1)
            await asyncio.sleep(2.0)  # the edge closes the idle socket
            second = await dev.complete("Hello world", max_tokens=12, seed=1)
            e.kill()
            with edge_server(target, *args) as again:
                assert again.url == e.url
                third = await dev.complete(PROMPT, max_tokens=12, seed=1)
    for r in (first, second, third):
        assert not r.degraded, r.degraded_reason
        assert r.edge_connects == 1
    assert first.tokens == second.tokens == target_ref.greedy("Hello world", 12)
    assert third.tokens == target_ref.greedy(PROMPT, 12)


async def test_unreachable_edge_degrades_and_the_device_keeps_serving(
    fixture_models: tuple[Path, Path]
) -> None:
    async with device(fixture_models[1], "http://127.0.0.1:9", policy="fixed") as dev:
        for _ in range(2):
            report = await dev.complete(PROMPT, max_tokens=8, seed=1)
            assert report.degraded and report.degraded_at_token == 0 and report.n_tokens == 8


def test_sync_wrapper_streams_and_keeps_the_meter(fixture_models: tuple[Path, Path],
                                                  edge: EdgeProc) -> None:
    with DeviceSync(fixture_models[1], edge=edge.url, policy="fixed",
                    llama_config=LlamaConfig(**SMALL)) as dev:
        pieces = [p.text for p in dev.stream(PROMPT, max_tokens=30, seed=1)]
        first = dev.last_report
        time.sleep(0.3)  # between calls the loop thread keeps the meter sampling
        second = dev.complete(PROMPT, max_tokens=30, seed=1)
        meter = dev.device.meter
        assert meter is not None and meter.latest is not None
        assert meter.latest.t_s > first.window_monotonic_s[1] + 0.2
    assert first is not None and "".join(pieces) == first.text == second.text
    assert first.meter_started_monotonic_s == second.meter_started_monotonic_s


async def test_bad_arguments_are_value_errors(fixture_models: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="power_budget_w"):
        Device(fixture_models[1], policy=PolicyConfig("fixed", power_budget_w=1.0))
    with pytest.raises(ValueError, match="plaintext"):
        Device(fixture_models[1], edge=EdgePlan(url="http://192.0.2.1:8470", token="t"))
    async with device(fixture_models[1], None, policy="device-only") as dev:
        with pytest.raises(ValueError, match="max_tokens"):
            await dev.complete(PROMPT, max_tokens=0)
        with pytest.raises(ValueError, match="does not fit"):
            await dev.complete("word " * 600, max_tokens=4)
        assert (await dev.complete(PROMPT, max_tokens=4)).n_tokens == 4  # still usable


def test_constructor_groups_edge_policy_and_draft(tmp_path: Path) -> None:
    """The short path, and each group in its record; the constructor loads nothing (the draft
    need not exist), so this runs without a model."""
    from ondevice.llm.device import draft_config
    from ondevice.llm.policies import GelatoPolicy

    draft = tmp_path / "draft.gguf"
    url = "http://127.0.0.1:8470"
    dev = Device(draft, edge=url)
    assert dev.plan == EdgePlan(url=url)  # that edge only, no discovery
    assert type(dev.policy) is GelatoPolicy and dev.policy.budget is None
    assert (dev.meter_spec, dev.require_meter, dev.top_k) == ("sim", True, 32)
    assert dev.llama_config == draft_config(draft) == LlamaConfig()  # no sidecar: defaults
    assert Device(draft).plan == EdgePlan(discover=True)  # no edge: discover, as the CLI
    assert Device(draft, edge=EdgePlan()).plan == EdgePlan()  # the draft alone
    plan = EdgePlan(url=url, discover=True, site="lab", timeout_s=3.0, require_edge=True)
    assert Device(draft, edge=plan).plan is plan

    fixed = Device(draft, policy=PolicyConfig("fixed", gamma=3, draft_ahead=2)).policy
    assert type(fixed) is FixedPolicy and (fixed.gamma, fixed.ahead) == (3, 2)
    gelato = Device(draft, policy=PolicyConfig(v=4.0, energy_per_token_j=0.5)).policy
    assert type(gelato) is GelatoPolicy and gelato.budget is not None
    assert gelato.budget.j_per_token == 0.5 and gelato.v == 4.0
    assert type(Device(draft, policy="device-only").policy).__name__ == "DeviceOnlyPolicy"
    own = FixedPolicy(5)
    assert Device(draft, policy=own).policy is own  # an object is kept, not copied
    config = LlamaConfig(n_ctx=256, n_threads=1)
    assert Device(draft, llama_config=config).llama_config is config

    with pytest.raises(ValueError, match="unknown policy"):
        Device(draft, policy="nope")
    with pytest.raises(ValueError, match="exactly one"):
        Device(draft, policy=PolicyConfig(power_budget_w=1.0, energy_per_token_j=1.0))
    with pytest.raises(ValueError, match="top_k"):
        Device(draft, edge=url, top_k=0)
    with pytest.raises(TypeError, match="EdgePlan"):
        Device(draft, edge=8470)  # type: ignore[arg-type]
