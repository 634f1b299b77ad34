"""``ondevice serve``'s ``/metrics``: a real serve process (with an edge, and without one), its
counters after requests moved by exactly what the responses say, the key rule, and
``promtool check metrics`` on the output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _edge import EdgeProc
from _prometheus import Samples, check_metrics, get, scrape
from _serve import ServeProc, post_completion, serve

from ondevice.llm.report import Report
from ondevice.serve._metrics import ServeMetrics, failovers, tokens_by_source

KEY = "serve-metrics-key"
FLAGS = ("--n-ctx", "512", "--threads", "1", "--policy", "gelato", "--power-budget", "1")


def _post(s: ServeProc, body: dict, key: str | None = KEY) -> tuple[int, bytes]:
    return post_completion(s.url, body, key=key)


def _streamed(raw: bytes) -> list[dict]:
    events = [b[len("data: "):] for b in raw.decode().split("\n\n") if b]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_counters_follow_the_responses(fixture_models: tuple[Path, Path], edge: EdgeProc,
                                       tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(KEY)
    with serve(fixture_models[1], *FLAGS, "--api-key-file", str(key), edge=edge.url) as s:
        assert get(s.url + "/metrics")[0] == 401
        assert get(s.url + "/metrics", "wrong")[0] == 401
        before = Samples(scrape(s.url, KEY))
        assert _post(s, {"model": "draft", "prompt": "x", "max_tokens": 2}, key=None)[0] == 401

        status, raw = _post(s, {"model": "draft", "prompt": "Hello world", "max_tokens": 24,
                                "temperature": 0, "seed": 1})
        assert status == 200
        whole = json.loads(raw)
        status, raw = _post(s, {"model": "draft", "prompt": "Once upon", "max_tokens": 16,
                                "temperature": 0, "seed": 2, "stream": True,
                                "stream_options": {"include_usage": True}})
        assert status == 200
        events = _streamed(raw)
        text = scrape(s.url, KEY)
    after = Samples(text)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    coinfer = [whole["coinfer"], next(e["coinfer"] for e in events if "coinfer" in e)]
    usage = [whole["usage"], events[-1]["usage"]]
    n = sum(u["completion_tokens"] for u in usage)
    assert n > 0
    assert moved("coinfer_device_requests_total", status="200") == 2
    assert moved("coinfer_device_requests_total", status="401") == 1
    assert after.sum("coinfer_device_tokens_total") == n
    assert moved("coinfer_device_prompt_tokens_total") == sum(u["prompt_tokens"] for u in usage)
    # the edge verified every round: no token from the draft alone
    assert after.value("coinfer_device_tokens_total", source="draft_alone") == 0
    assert after.value("coinfer_device_tokens_total", source="draft_accepted") > 0
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds"):
        assert moved(f"coinfer_device_{name}_count") == 2
    # one inter-token latency per piece after the first: at least a round's worth
    assert after.value("coinfer_device_inter_token_latency_seconds_count") >= 2
    assert after.value("coinfer_device_e2e_request_latency_seconds_sum") >= sum(
        c["elapsed_s"] for c in coinfer)
    source = coinfer[0]["energy_source"]
    assert source in ("measured", "modelled")
    assert after.value("coinfer_device_energy_joules_total", source=source) == pytest.approx(
        sum(c["energy_j"] for c in coinfer))
    assert after.value("coinfer_device_power_watts", source=source) == pytest.approx(
        coinfer[1]["mean_power_w"])
    assert after.value("coinfer_device_generation_seconds_total") == pytest.approx(
        sum(c["elapsed_s"] for c in coinfer))
    assert after.value("coinfer_device_gelato_queue_joules") == pytest.approx(
        coinfer[1]["policy_settings"]["queue_j"])
    assert after.value("coinfer_device_power_budget_watts") == 1.0
    assert math.isnan(after.value("coinfer_device_energy_per_token_budget_joules"))
    assert after.value("coinfer_device_edge_connects_total") == sum(
        c["edge_connects"] for c in coinfer) >= 1
    assert after.value("coinfer_device_edge_failovers_total") == 0
    assert after.value("coinfer_device_requests_running") == 0
    assert after.value("coinfer_device_requests_waiting") == 0
    check_metrics(text)  # last: without promtool the counters above are still checked


def test_metrics_public_and_the_draft_alone(fixture_models: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(KEY)
    with serve(fixture_models[1], "--n-ctx", "512", "--threads", "1", "--api-key-file",
               str(key), "--metrics-public") as s:  # no edge: the draft generates alone
        status, raw = _post(s, {"model": "draft", "prompt": "Hello", "max_tokens": 5,
                                "temperature": 0})
        assert status == 200
        n = json.loads(raw)["usage"]["completion_tokens"]
        status, text = get(s.url + "/metrics")  # no key
        assert get(s.url + "/v1/models")[0] == 401  # the API still needs it
    assert status == 200
    after = Samples(text)
    assert after.value("coinfer_device_tokens_total", source="draft_alone") == n == 5
    assert after.value("coinfer_device_tokens_total", source="edge") == 0
    assert after.value("coinfer_device_degraded_requests_total") == 0  # no edge was asked for
    assert after.value("coinfer_device_edge_failovers_total") == 0  # it never had an edge
    check_metrics(text)


def _report(**kw: object) -> Report:
    base: dict = dict(
        text="", tokens=[], n_tokens=10, prompt_tokens=3, policy="gelato", policy_settings={},
        edge=None, edges=[], degraded=False, degraded_at_token=None, degraded_reason=None,
        rejected_edges=[], segments=[], stop_reason="max_tokens", elapsed_s=1.0,
        tokens_per_s=10.0, rounds=2, drafted=6, accepted=4, acceptance=4 / 6,
        mean_drafted=3.0, mean_draft_ms=None, mean_verify_ms=None, mean_rtt_ms=None,
        overhead_ms_per_round=None, energy_j=None, energy_source="none", energy_note=None,
        j_per_token=None, mean_power_w=None, budget_w=None, budget_j_per_token=None,
        budget_met=None, meter="none", meter_coverage=0.0, window_monotonic_s=(0.0, 1.0),
        temperature=0.0, seed=0)
    base.update(kw)
    return Report(**base)


@pytest.mark.parametrize(("kw", "split", "moves"), [
    # two rounds on one edge: 4 accepted drafts, the rest the target's
    ({"edges": ["e1"], "segments": [{"source": "e1", "from_token": 0, "to_token": 10}]},
     {"draft_accepted": 4, "edge": 6, "draft_alone": 0}, 0),
    # e1 failed at 3, e2 to 7, then the draft alone (degraded): two moves
    ({"edges": ["e1", "e2"], "degraded": True, "accepted": 2,
      "segments": [{"source": "e1", "from_token": 0, "to_token": 3},
                   {"source": "e2", "from_token": 3, "to_token": 7},
                   {"source": "draft", "from_token": 7, "to_token": 10}]},
     {"draft_accepted": 2, "edge": 5, "draft_alone": 3}, 2),
    # no edge at all: every token the draft's, and no failover
    ({"degraded": True, "accepted": 0, "drafted": 0,
      "segments": [{"source": "draft", "from_token": 0, "to_token": 10}]},
     {"draft_accepted": 0, "edge": 0, "draft_alone": 10}, 0),
])
def test_tokens_by_source_and_failovers(kw: dict, split: dict, moves: int) -> None:
    report = _report(**kw)
    assert tokens_by_source(report) == split
    assert sum(split.values()) == report.n_tokens
    assert failovers(report) == moves


def test_observe_report_counts_energy_by_source() -> None:
    m = ServeMetrics()
    m.observe_report(_report(energy_j=2.5, energy_source="measured", mean_power_w=2.5,
                             budget_w=2.0, budget_met=False,
                             policy_settings={"queue_j": 0.75, "mean_reference_budget": 3.5}))
    m.observe_report(_report(energy_j=1.0, energy_source="modelled", mean_power_w=1.0))
    m.observe_report(_report(energy_j=None, energy_source="none"))  # no reading: not counted
    r = m.registry
    assert r.get_sample_value("coinfer_device_energy_joules_total", {"source": "measured"}) == 2.5
    assert r.get_sample_value("coinfer_device_energy_joules_total", {"source": "modelled"}) == 1.0
    assert r.get_sample_value("coinfer_device_budget_missed_total") == 1
    assert r.get_sample_value("coinfer_device_gelato_queue_joules") == 0.0  # the last report's
    assert math.isnan(r.get_sample_value("coinfer_device_power_budget_watts"))
    assert r.get_sample_value("coinfer_device_tokens_total", {"source": "edge"}) == 18
    assert r.get_sample_value("coinfer_device_tokens_total", {"source": "draft_accepted"}) == 12


def test_request_timer() -> None:
    m = ServeMetrics()
    t = m.timer(10.0)
    t.piece(0, 10.5)  # a piece without tokens is not timed
    t.piece(3, 11.0)
    t.piece(1, 11.25)
    t.piece(2, 11.75)
    t.finish(12.0)
    r = m.registry
    assert r.get_sample_value("coinfer_device_time_to_first_token_seconds_sum") == 1.0
    assert r.get_sample_value("coinfer_device_inter_token_latency_seconds_count") == 2
    assert r.get_sample_value("coinfer_device_inter_token_latency_seconds_sum") == 0.75
    assert r.get_sample_value("coinfer_device_e2e_request_latency_seconds_sum") == 2.0
