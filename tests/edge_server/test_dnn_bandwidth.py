"""The edge's bandwidth book: who is active, shares by sqrt(Q * airtime), departures."""

from __future__ import annotations

import math

import pytest

from edge_server._bandwidth import ACTIVE_S, BandwidthBook


def test_alone_gets_everything_and_quiet_devices_expire() -> None:
    book = BandwidthBook()
    book.report("a", queue_j=0.5, bits=8e4, spectral_eff=2.0, now=0.0, owner=1)
    assert book.share("a", 0.0) == (pytest.approx(1.0), 1)
    book.report("b", queue_j=0.5, bits=8e4, spectral_eff=2.0, now=1.0, owner=2)
    share_b, users = book.share("b", 1.0)
    assert users == 2 and share_b == pytest.approx(0.5)
    # a is silent for longer than ACTIVE_S: b has the band again
    assert book.share("b", ACTIVE_S + 0.5) == (pytest.approx(1.0), 1)
    assert len(book) == 1


def test_shares_follow_queue_and_airtime_and_sum_to_one() -> None:
    book = BandwidthBook(floor=0.05)
    book.report("small-q", queue_j=1.0, bits=8e4, spectral_eff=2.0, now=0.0, owner=1)
    book.report("big-q", queue_j=9.0, bits=8e4, spectral_eff=2.0, now=0.0, owner=1)
    book.report("poor-link", queue_j=1.0, bits=8e4, spectral_eff=0.5, now=0.0, owner=2)
    book.report("idle-q", queue_j=0.0, bits=8e4, spectral_eff=2.0, now=0.0, owner=3)
    shares = {d: book.share(d, 0.0)[0] for d in ("small-q", "big-q", "poor-link", "idle-q")}
    assert sum(shares.values()) == pytest.approx(1.0)
    # w_i = floor/n + (1 - floor) sqrt(Q_i a_i) / sum_j sqrt(Q_j a_j), a_i = bits_i / eff_i
    w = {"small-q": math.sqrt(1 * 4e4), "big-q": math.sqrt(9 * 4e4),
         "poor-link": math.sqrt(1 * 16e4), "idle-q": 0.0}
    total = sum(w.values())
    for d, s in shares.items():
        assert s == pytest.approx(0.05 / 4 + 0.95 * w[d] / total)
    assert shares["big-q"] > shares["poor-link"] > shares["small-q"] > shares["idle-q"] > 0


def test_departures_and_bad_reports() -> None:
    book = BandwidthBook()
    book.report("a", queue_j=1.0, bits=1e4, spectral_eff=1.0, now=0.0, owner=1)
    book.report("b", queue_j=1.0, bits=0, spectral_eff=1.0, now=0.0, owner=2)  # no bits now
    assert book.share("b", 0.0)[1] == 2 and book.share("b", 0.0)[0] == pytest.approx(0.5)
    book.forget_owner(1)
    assert book.share("b", 0.0) == (pytest.approx(1.0), 1)
    assert book.share("stranger", 0.0) == (pytest.approx(0.5), 2)  # not yet reported
    for bad in (dict(queue_j=-1.0), dict(bits=math.inf), dict(spectral_eff=math.nan)):
        kw = dict(queue_j=0.0, bits=1.0, spectral_eff=1.0) | bad
        with pytest.raises(ValueError):
            book.report("c", now=0.0, owner=3, **kw)  # type: ignore[arg-type]
