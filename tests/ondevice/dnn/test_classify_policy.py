"""The per-task plans of every policy on the digits profile, the energy queue, the profile
reader, and the stop rule it derives. Pure: no sockets, no onnxruntime."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from hw import LinkState
from ondevice.common.dnn_profile import (
    RAW_SPLIT,
    DnnProfileError,
    codec_fingerprint,
    load_dnn,
    stop_rule,
)
from ondevice.dnn.enachi import choose_task, entropy_threshold, predict
from ondevice.dnn.policy import (
    DEVICE_SPLIT,
    ClassifyController,
    TaskOutcome,
    packet_bytes_for,
    wire_bytes,
)

N0 = 10 ** (-20.4)  # -174 dBm/Hz in W/Hz
STATE = LinkState(bandwidth_hz=0.2e6, noise_w_per_hz=N0, mean_gain=10 * N0 * 0.2e6 / 0.1,
                  gain=1.0, p_max_w=0.1)  # 10 dB at p_max, no fading


@pytest.fixture(scope="module")
def profile(digits_dnn: Path):  # type: ignore[no-untyped-def]
    return load_dnn(digits_dnn)


def test_profile_reader_and_fingerprints(profile, digits_dnn: Path, tmp_path: Path) -> None:
    assert profile.name == "digits-cnn" and profile.input_shape == (1, 8, 8)
    assert sorted(profile.splits) == [1, 2, 3] and profile.raw_bytes == 64
    s2 = profile.split(2)
    assert s2.feature_bytes == 512 and s2.fingerprint == codec_fingerprint(s2.codec)
    assert len({s.fingerprint for s in profile.splits.values()}) == 3
    assert load_dnn(digits_dnn).model_id == profile.model_id
    with pytest.raises(DnnProfileError, match="no split 9"):
        profile.split(9)
    with pytest.raises(DnnProfileError, match=r"no profile\.json"):
        load_dnn(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(digits_dnn, broken)
    (broken / "tail_2.onnx").unlink()
    with pytest.raises(DnnProfileError, match=r"missing tail_2\.onnx"):
        load_dnn(broken)
    (broken / "profile.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DnnProfileError, match="not a coinfer-dnn-profile"):
        load_dnn(broken)


def test_stop_rule_from_the_curves(profile) -> None:
    for s in profile.splits.values():
        c = s.curve
        rule = stop_rule(c, 0.01)
        assert rule.entropy_nats <= entropy_threshold(c.fractions, c.accuracy, c.entropy,
                                                      tolerance=0.01)
        assert rule.min_fraction == c.fractions[c.entropy.index(max(c.entropy))]
        assert not rule.should_stop(rule.entropy_nats, 1.0)  # strictly under
        assert rule.should_stop(rule.entropy_nats / 2, 1.0)
        if rule.min_fraction > 0:
            assert not rule.should_stop(0.0, rule.min_fraction / 2)


def test_packets_and_wire_bytes() -> None:
    assert packet_bytes_for(512) == 64 and packet_bytes_for(75264) == 1400
    assert packet_bytes_for(9408) == 600
    # 512 B in 52-byte payloads: 10 packets, each with a 12-byte header and frame overhead
    assert wire_bytes(512, 64) == 512 + 10 * (12 + 60)


def test_baseline_plans(profile) -> None:
    def plan(policy: str, **kw):  # type: ignore[no-untyped-def]
        ctl = ClassifyController(policy, profile, deadline_s=0.1, **kw)
        return ctl, ctl.plan(ctl.link(STATE), 1.0, period_s=0.1)

    _, p = plan("device-only")
    assert p.on_device and p.split == DEVICE_SPLIT and p.p_ref_w == 0.0
    _, p = plan("edge-only")
    assert (p.split, p.p_ref_w, p.progressive, p.tracking) == (RAW_SPLIT, 0.1, False, False)
    ctl, p = plan("fixed-split")
    # Neurosurgeon-like: the split of least predicted latency with everything at p_max
    times = {i: predict(ctl.option(i), ctl.link(STATE), 1.0, 0.1, math.inf,
                        progressive=False)[2] for i in (1, 2, 3)}
    assert p.split == min(times, key=times.get) and not p.progressive
    assert plan("fixed-split", fixed_split=1)[1].split == 1
    with pytest.raises(ValueError):
        plan("fixed-split", fixed_split=8)
    with pytest.raises(ValueError):
        plan("random")


def test_enachi_plans_are_choose_task(profile) -> None:
    for policy, progressive, tracking in (("enachi", True, True),
                                          ("no-progressive", False, True),
                                          ("constant-power", True, False)):
        ctl = ClassifyController(policy, profile, deadline_s=0.05, device_slowdown=50.0)
        link = ctl.link(STATE)
        p = ctl.plan(link, 0.5, period_s=0.05)
        want = choose_task([ctl.option(i) for i in ctl.candidates()], link, 0.5, q_j=0.0,
                           v=ctl.v, deadline_s=0.05, powers_w=ctl.powers(0.1),
                           progressive=progressive, tracking=tracking)
        assert p.p_ref_w == want.p_ref_w and p.predicted_accuracy == want.predicted_accuracy
        assert p.progressive == (progressive and p.split > RAW_SPLIT)
        assert p.tracking == tracking
    pinned = ClassifyController("enachi", profile, deadline_s=0.05, fixed_split=3)
    assert pinned.candidates() == [3]
    assert pinned.plan(pinned.link(STATE), 1.0, period_s=0.05).split == 3


def test_queue_and_estimates(profile) -> None:
    ctl = ClassifyController("enachi", profile, deadline_s=0.05, power_budget_w=0.02)
    c = 0.02 * 0.05  # the allowance of a 50 ms period
    ctl.observe(TaskOutcome(2, energy_j=3 * c, period_s=0.05, head_s=0.004, head_j=0.008,
                            tail_ms=2.0, rtt_s=0.003))
    assert ctl.q_j == pytest.approx(2 * c)
    ctl.observe(TaskOutcome(2, energy_j=0.0, period_s=0.05))
    assert ctl.q_j == pytest.approx(c)
    ctl.observe(TaskOutcome(2, energy_j=0.0, period_s=0.2))
    assert ctl.q_j == 0.0
    # the first measurement all but replaces the profile's prior
    assert ctl.est.head_s[2].value == pytest.approx(0.004, rel=0.4)
    assert ctl.est.tail_s[2].value == pytest.approx(0.002, rel=0.4)
    # a full queue makes the plan trade accuracy for energy
    free = ClassifyController("enachi", profile, deadline_s=0.05, power_budget_w=0.02)
    free_plan = free.plan(free.link(STATE), 1.0, period_s=0.05)
    free.q_j = 1e3 * c
    tight_plan = free.plan(free.link(STATE), 1.0, period_s=0.05)
    assert tight_plan.predicted_energy_j <= free_plan.predicted_energy_j
