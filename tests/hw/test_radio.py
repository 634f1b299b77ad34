"""The radio: emulated channel against closed forms, Rayleigh statistics, pacing, the deadline
cut; the Wi-Fi backend's parsers on recorded `iw` output and its power control through a
stand-in `iw` executable (a script that answers as the tool does)."""

from __future__ import annotations

import asyncio
import math
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hw import ChannelSpecError, ConstantPower, EmulatedChannel, NullChannel, open_channel
from hw._radio import dbm_to_w, shannon_bps
from hw._wifi import WifiChannel, parse_iw_info, parse_station_dump, txpower_mbm
from ondevice.dnn.enachi import PowerTracker

N0 = dbm_to_w(-174.0)


def test_shannon_and_units() -> None:
    assert pytest.approx(3.981e-21, rel=1e-3) == N0
    snr = 0.1 * 1e-12 / (N0 * 0.5 * 2e6)
    assert shannon_bps(0.5, 2e6, 0.1, 1e-12, N0) == pytest.approx(1e6 * math.log2(1 + snr))
    assert shannon_bps(0.5, 2e6, 0.0, 1e-12, N0) == 0.0
    ch = EmulatedChannel(bw_mhz=2, snr_db=10, p_max_w=0.1)
    # snr_db fixes the mean gain: p_max * g / (N0 W) = 10
    assert 0.1 * ch.mean_gain / (N0 * 2e6) == pytest.approx(10.0)


async def test_steady_channel_rate_energy_and_pacing() -> None:
    """No fading, constant power: airtime 8N/R, energy (p + circuit) * airtime, and the call
    takes that long in real time."""
    async with EmulatedChannel(bw_mhz=1, snr_db=6, fading="none", circuit_w=0.2) as ch:
        rate = shannon_bps(0.5, 1e6, 0.05, ch.mean_gain, N0)
        t0 = time.monotonic()
        rep = await ch.async_send(20_000, share=0.5, power=ConstantPower(0.05))
        wall = time.monotonic() - t0
    want = 8 * 20_000 / rate
    assert rep.delivered and rep.airtime_s == pytest.approx(want, rel=1e-9)
    assert rep.energy_j == pytest.approx((0.05 + 0.2) * want, rel=1e-9)
    assert rep.slots == math.ceil(want / 0.005) or rep.slots == math.ceil(want / 0.005) + 1
    assert 0.95 * want <= wall <= want + 0.1
    assert ch.energy_j == pytest.approx(rep.energy_j) and ch.bytes_sent == 20_000


async def test_tracker_slots_against_closed_form() -> None:
    """One fading block for the whole message: the slots' powers are the tracker's sequence
    at that gain; solving the first and last (partial) slots' durations from the airtime and
    the bits, the energy must be sum p_k dt_k with both partial slots within one slot."""
    ch = EmulatedChannel(bw_mhz=0.5, snr_db=8, coherence_ms=60_000, seed=7, slot_ms=5)
    async with ch:
        g = ch.block_gain(0)
        kw = dict(p_ref_w=0.03, share=0.7, bandwidth_hz=0.5e6, noise_w_per_hz=N0,
                  p_max_w=0.1, mean_gain=ch.mean_gain)
        rep = await ch.async_send(12_000, share=0.7, power=PowerTracker(**kw))
    replica = PowerTracker(**kw)
    p = np.array([replica.step(g) for _ in range(rep.slots)])  # [n]
    r = np.array([shannon_bps(0.7, 0.5e6, x, g, N0) for x in p])  # [n]
    n, s = rep.slots, 0.005
    assert n >= 3
    # A = d1 + (n-2) s + dn ;  8N = r1 d1 + sum(r[1:-1]) s + rn dn
    a = np.array([[1.0, 1.0], [r[0], r[-1]]])
    b = np.array([rep.airtime_s - (n - 2) * s, 8 * 12_000 - r[1:-1].sum() * s])
    d1, dn = np.linalg.solve(a, b)
    assert -1e-9 <= d1 <= s + 1e-9 and -1e-9 <= dn <= s + 1e-9
    want = p[0] * d1 + p[1:-1].sum() * s + p[-1] * dn
    assert rep.energy_j == pytest.approx(want, rel=1e-6)


def test_rayleigh_blocks_are_seeded_exponential() -> None:
    a = EmulatedChannel(seed=3)
    b = EmulatedChannel(seed=3)
    c = EmulatedChannel(seed=4)
    ga = np.array([a.block_gain(k) for k in range(20_000)]) / a.mean_gain
    gb = np.array([b.block_gain(k) for k in range(20_000)]) / b.mean_gain
    gc = np.array([c.block_gain(k) for k in range(100)]) / c.mean_gain
    assert np.array_equal(ga, gb) and not np.array_equal(ga[:100], gc)
    assert ga.mean() == pytest.approx(1.0, rel=0.03)  # E|h|^2 = mean gain
    for x in (0.1, 0.5, 1.0, 2.0):  # |h|^2 ~ Exp(1): P(X < x) = 1 - exp(-x)
        assert (ga < x).mean() == pytest.approx(1 - math.exp(-x), abs=0.015)
    flat = EmulatedChannel(fading="none")
    assert flat.block_gain(5) == flat.mean_gain


async def test_deadline_cut_and_back_to_back_queue() -> None:
    async with EmulatedChannel(bw_mhz=0.1, snr_db=5, fading="none") as ch:
        loop = asyncio.get_running_loop()
        rate = shannon_bps(1.0, 1e5, 0.1, ch.mean_gain, N0)
        until = loop.time() + 0.05
        rep = await ch.async_send(100_000, share=1.0, power=ConstantPower(0.1), until=until)
        assert not rep.delivered
        assert rep.t_end == pytest.approx(until, abs=1e-6)
        # (it may have started up to a slot early: queued behind the channel's opening)
        assert 0.05 - 1e-9 <= rep.airtime_s <= 0.055
        assert rep.energy_j == pytest.approx(0.1 * rep.airtime_s)
        assert ch.bytes_sent == 0
        # Two messages back to back: the second queues behind the first (no idle gap).
        first = await ch.async_send(500, share=1.0, power=ConstantPower(0.1))
        second = await ch.async_send(500, share=1.0, power=ConstantPower(0.1))
        assert second.t_end - first.t_end == pytest.approx(8 * 500 / rate, rel=1e-6)


async def test_null_channel_and_specs() -> None:
    async with open_channel("none") as ch:
        assert isinstance(ch, NullChannel) and not ch.modelled
        rep = await ch.async_send(10**6, share=0.1, power=ConstantPower(0.1))
        assert rep.delivered and rep.energy_j == 0.0
    ch = open_channel("emulated:bw=5,snr_db=3,fading=none,coherence_ms=20,seed=9,slot_ms=2")
    assert isinstance(ch, EmulatedChannel) and ch.modelled
    assert (ch.bandwidth_hz, ch.seed, ch.slot_s, ch.fading) == (5e6, 9, 0.002, "none")
    for bad in ("radio", "emulated:bw=x", "emulated:foo=1", "emulated:fading=rician",
                "emulated:bw=-2", "none:x", "wifi", "wifi:wl an0", "wifi:wlan0,bogus=1"):
        with pytest.raises(ChannelSpecError):
            open_channel(bad)


# -- Wi-Fi: recorded `iw` output ------------------------------------------------------------

# Recorded from an Intel AX201 client (HE, two chains) and an older Atheros 802.11n stick; the
# MAC addresses are changed.
STATION_HE = textwrap.dedent("""\
    Station c8:7f:54:00:0c:0c (on wlp0s20f3)
    \tinactive time:\t8 ms
    \trx bytes:\t27240
    \trx packets:\t101
    \ttx bytes:\t15478
    \ttx packets:\t94
    \ttx retries:\t3
    \ttx failed:\t0
    \tbeacon loss:\t23
    \tbeacon rx:\t60
    \trx drop misc:\t26
    \tsignal:  \t-62 [-62, -71] dBm
    \tsignal avg:\t-61 dBm
    \ttx bitrate:\t245.0 MBit/s 80MHz HE-MCS 3 HE-NSS 2 HE-GI 2 HE-DCM 0
    \ttx duration:\t0 us
    \trx bitrate:\t648.5 MBit/s 80MHz HE-MCS 6 HE-NSS 2 HE-GI 0 HE-DCM 0
    \trx duration:\t0 us
    \tauthorized:\tyes
    \tauthenticated:\tyes
    \tassociated:\tyes
    \tpreamble:\tlong
    \tWMM/WME:\tyes
    \tMFP:\t\tno
    \tTDLS peer:\tno
    \tDTIM period:\t1
    \tbeacon interval:100
    \tshort slot time:yes
    \tconnected time:\t8 seconds
    """)
STATION_N = textwrap.dedent("""\
    Station 12:34:56:78:9a:bc (on wlan0)
    \tinactive time:\t1450 ms
    \trx bytes:\t24668671
    \trx packets:\t114373
    \ttx bytes:\t1606991
    \ttx packets:\t8557
    \ttx retries:\t623
    \ttx failed:\t1425
    \tsignal:  \t-52 dBm
    \tsignal avg:\t-53 dBm
    \ttx bitrate:\t150.0 MBit/s MCS 7 40MHz short GI
    \tauthorized:\tyes
    \tauthenticated:\tyes
    \tpreamble:\tlong
    \tWMM/WME:\tyes
    \tMFP:\t\tno
    \tTDLS peer:\tno
    """)
INFO = textwrap.dedent("""\
    Interface wlan0
    \tifindex 3
    \twdev 0x1
    \taddr b8:27:eb:00:00:01
    \tssid lab
    \ttype managed
    \twiphy 0
    \tchannel 36 (5180 MHz), width: 80 MHz, center1: 5210 MHz
    \ttxpower 20.00 dBm
    """)


def test_parse_station_dump_recorded() -> None:
    (he,) = parse_station_dump(STATION_HE)
    assert he.mac == "c8:7f:54:00:0c:0c"
    assert (he.signal_dbm, he.signal_avg_dbm) == (-62.0, -61.0)
    assert (he.tx_bitrate_mbit, he.rx_bitrate_mbit, he.width_mhz) == (245.0, 648.5, 80.0)
    assert (he.tx_retries, he.tx_failed) == (3, 0)
    both = parse_station_dump(STATION_N + STATION_HE)
    assert [s.mac for s in both] == ["12:34:56:78:9a:bc", "c8:7f:54:00:0c:0c"]
    assert (both[0].signal_dbm, both[0].tx_bitrate_mbit, both[0].width_mhz) == (-52.0, 150.0,
                                                                               40.0)
    assert parse_station_dump("") == [] and parse_station_dump("Not connected.\n") == []
    info = parse_iw_info(INFO)
    assert (info.txpower_dbm, info.freq_mhz, info.width_mhz) == (20.0, 5180.0, 80.0)
    assert txpower_mbm(0.1) == 2000 and txpower_mbm(0.02) == 1300 and txpower_mbm(1e-9) == 0


def _fake_iw(tmp_path: Path, mode: str) -> Path:
    """An `iw` stand-in: prints the recorded output; `set txpower fixed N` is honoured
    (``honour``), ignored (``ignore``) or refused as without root (``refuse``)."""
    state = tmp_path / "txpower"
    state.write_text("20.00")
    (tmp_path / "station").write_text(STATION_N)
    (tmp_path / "info").write_text(INFO)
    iw = tmp_path / "iw"
    iw.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        from pathlib import Path
        d = Path({str(tmp_path)!r})
        args = sys.argv[1:]
        (d / "calls").open("a").write(" ".join(args) + "\\n")
        if args[2:4] == ["station", "dump"]:
            print((d / "station").read_text(), end="")
        elif args[2:3] == ["info"]:
            tx = (d / "txpower").read_text()
            print((d / "info").read_text().replace("txpower 20.00", "txpower " + tx), end="")
        elif args[2:5] == ["set", "txpower", "fixed"]:
            if {mode!r} == "refuse":
                print("command failed: Operation not permitted (-1)", file=sys.stderr)
                sys.exit(1)
            if {mode!r} == "honour":
                (d / "txpower").write_text("%.2f" % (int(args[5]) / 100))
        else:
            sys.exit(2)
        """))
    iw.chmod(0o755)
    return iw


@pytest.mark.parametrize("mode,want", [("honour", "applied"), ("ignore", "ignored"),
                                       ("refuse", "refused")])
async def test_wifi_channel_with_iw(tmp_path: Path, mode: str, want: str) -> None:
    iw = _fake_iw(tmp_path, mode)
    async with WifiChannel("wlan0", iw=str(iw), poll_s=30.0) as ch:
        link = ch.link()
        assert link.bandwidth_hz == 40e6  # the station's tx bitrate width
        assert link.p_max_w == pytest.approx(0.1)
        # path gain = signal avg (-53 dBm) - txpower (20 dBm) = -73 dB
        assert 10 * math.log10(link.gain) == pytest.approx(-73.0)
        rep = await ch.async_send(1000, share=1.0, power=ConstantPower(0.01))  # 10 dBm
        assert rep.delivered and rep.energy_j == 0.0 and not ch.modelled
        assert ch.power_control.startswith(want)
        await ch.async_send(1000, share=1.0, power=ConstantPower(0.0105))  # < 1 dB: no call
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls.count("dev wlan0 set txpower fixed 1000") == 1
    assert not any("fixed 1000 " in c or c.endswith("mBm") for c in calls)


class _LongUptimeLoop(asyncio.SelectorEventLoop):
    """A real event loop whose clock reads as on a board up for 5.5 hours (loop time
    ~20 000 s, where a float's spacing exceeds 1e-12 s)."""

    def time(self) -> float:
        return super().time() + 20_000.0


def test_send_completes_on_a_long_uptime_clock() -> None:
    """At loop time ~20 000 s the slot-edge arithmetic once rounded back onto the same
    slot and spun forever; the send must end, taking its airtime."""

    async def send() -> tuple[object, float]:
        async with EmulatedChannel(bw_mhz=1, snr_db=6, fading="none", circuit_w=0.2) as ch:
            rep = await ch.async_send(20_000, share=0.5, power=ConstantPower(0.05))
            return rep, ch.mean_gain

    with asyncio.Runner(loop_factory=_LongUptimeLoop) as runner:
        rep, gain = runner.run(asyncio.wait_for(send(), 10.0))
    want = 8 * 20_000 / shannon_bps(0.5, 1e6, 0.05, gain, N0)
    assert rep.delivered and rep.airtime_s == pytest.approx(want, rel=1e-6)  # type: ignore[attr-defined]
