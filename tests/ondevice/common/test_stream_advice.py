"""The edge's advice to stream (``ondevice/common/stream_advice.py``): on for a busy edge whose
verified positions cost it as much as generated ones (a CPU), off for a GPU-like cost line, off
while the edge is not the bottleneck or has seen too few rounds."""

from __future__ import annotations

import pytest

from ondevice.common.stream_advice import BUSY, MIN_ROUNDS, StreamAdvisor


def _fed(c0_ms: float, c1_ms: float, *, busy: float, rounds_per_step: int = 3,
         decoded: int = 5, produced: int = 3, active: int = 8,
         steps: int = 60) -> StreamAdvisor:
    """An advisor fed ``steps`` steps on the line ``c0 + c1 x``, each with
    ``rounds_per_step`` rounds of ``decoded``/``produced`` tokens and 0-2 single-token jobs
    (varied sizes), a compute thread busy ``busy`` of the time, ``active`` sessions."""
    adv = StreamAdvisor()
    for i in range(steps):
        singles = i % 3
        x = rounds_per_step * decoded + singles
        compute_s = (c0_ms + c1_ms * x) / 1e3
        adv.observe_step(compute_s=compute_s, idle_s=compute_s * (1 - busy) / busy,
                         tokens=x, jobs=rounds_per_step + singles, active=active,
                         rounds=[(decoded, produced)] * rounds_per_step, fit=True)
    return adv


def test_a_busy_cpu_edge_advises_streaming() -> None:
    # This VM's edge with Gemma 3 270M: ~35 ms a step plus ~9 ms a token (a logits row each).
    adv = _fed(35.0, 9.0, busy=0.95)
    c0, c1 = adv.step_ms.coef()
    assert c0 == pytest.approx(35.0, rel=1e-6) and c1 == pytest.approx(9.0, rel=1e-6)
    stream, verify = adv.costs_ms()
    assert stream == pytest.approx(35.0 / 8 + 9.0, rel=1e-3)
    # Each round's share: 35 / J + 9 x 5 with J = 3..5 jobs, over the 3 tokens it produced.
    assert (35.0 / 5 + 45.0) / 3 < verify < (35.0 / 3 + 45.0) / 3
    assert adv.advise_stream and adv.describe()["advise_stream"] is True


def test_a_gpu_like_edge_does_not() -> None:
    # edge-gpu-32k's line: 25.6 ms a step, 0.46 ms a token: verification is nearly free.
    assert not _fed(25.56, 0.46, busy=0.95).advise_stream


def test_no_advice_while_the_edge_is_not_the_bottleneck() -> None:
    adv = _fed(35.0, 9.0, busy=BUSY - 0.2)
    assert adv.busy.value < BUSY and not adv.advise_stream


def test_no_advice_before_enough_rounds() -> None:
    few = _fed(35.0, 9.0, busy=0.95, rounds_per_step=1, steps=MIN_ROUNDS - 1)
    assert few.rounds == MIN_ROUNDS - 1 and not few.advise_stream
    assert _fed(35.0, 9.0, busy=0.95, rounds_per_step=1, steps=MIN_ROUNDS).advise_stream


def test_rounds_that_produce_all_they_decode_keep_drafting() -> None:
    # Every drafted token accepted (5 decoded, 5 produced): a round's tokens cost the edge
    # less than streamed ones on the same CPU line, so the advice stays off.
    assert not _fed(35.0, 9.0, busy=0.95, decoded=5, produced=5).advise_stream


def test_steps_without_rounds_leave_the_verify_figures_alone() -> None:
    adv = _fed(35.0, 9.0, busy=0.95)
    before = (adv.rounds, adv.verify_ms, adv.verify_tokens, adv.step_ms.coef())
    for _ in range(50):  # every session streams: 8 single tokens a step, nothing verified
        adv.observe_step(compute_s=0.107, idle_s=0.001, tokens=8, jobs=8, active=8, rounds=[],
                         fit=True)
    assert (adv.rounds, adv.verify_ms, adv.verify_tokens, adv.step_ms.coef()) == before
    assert adv.advise_stream  # the advice holds while everyone streams


def test_an_edge_idling_between_rounds_prices_its_idle_time() -> None:
    """Rounds that cost the edge a little less compute per token than streaming would, but
    leave it idle a fifth of the time between them: the fleet still goes faster streaming."""
    near = _fed(35.0, 9.0, busy=1.0, decoded=4, produced=4)  # verify ~ stream
    stream, verify = near.costs_ms()
    assert verify < stream and not near.advise_stream
    idle = _fed(35.0, 9.0, busy=0.82, decoded=4, produced=4)
    assert idle.advise_stream
