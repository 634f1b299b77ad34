"""``wifi:IFACE``: a Linux Wi-Fi link through `iw` (nl80211), for the real radio.

Reading: ``iw dev IFACE station dump`` (per associated station: ``signal``, ``tx bitrate``
with its channel width) and ``iw dev IFACE info`` (``txpower``, ``channel ..., width``), polled
every ``poll_s`` in a worker thread. The path gain the controller needs is estimated as
signal (dBm) - transmit power (dBm): the signal iw reports is the one *received* from the
station (the access point), and on a reciprocal channel with a similar transmit power on both
ends that is the uplink's gain too; say otherwise with a measured value if it matters.

Writing: ``iw dev IFACE set txpower fixed N`` with N in mBm (1/100 dBm; written without the
``mBm`` suffix, which some iw versions reject), needs root (CAP_NET_ADMIN). Many drivers
ignore the request or clamp it: out-of-tree Realtek drivers stay at 12 dBm (rtl8188eus
issue 25, rtl88x2bu issue 71, armbian/build issue 7221), mac80211 caps it at the limit the
access point advertises (xanmod/linux issue 237), and on the Raspberry Pi 4's own brcmfmac
radio ``iw dev`` shows the new value while the access point sees no change
(raspberrypi/firmware issue 1736). The channel therefore reads ``txpower`` back after each set
and flags ``power_control`` as ``"ignored"`` when the value did not move; even a value that
moved is only the driver's word.

The radio paces itself here (no sleeps), and its energy is whatever the meter measures
(``modelled = False``). Parsing is pure and tested on recorded output (tests/hw/test_radio.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import subprocess
from dataclasses import dataclass

from hw._radio import (
    NOISE_DBM_PER_HZ,
    Channel,
    ChannelSpecError,
    LinkState,
    SlotPower,
    TxReport,
    dbm_to_w,
)

log = logging.getLogger(__name__)

IW_TIMEOUT_S = 2.0  # s per iw call
POWER_STEP_DB = 1.0  # dB: smaller changes are not worth an iw call
POWER_FLOOR_DBM = 0.0  # most drivers refuse levels under 0 dBm


@dataclass(frozen=True, slots=True)
class Station:
    """One ``Station`` block of ``iw dev IFACE station dump``. dBm, Mbit/s, MHz."""

    mac: str
    signal_dbm: float | None
    signal_avg_dbm: float | None
    tx_bitrate_mbit: float | None
    rx_bitrate_mbit: float | None
    width_mhz: float | None  # from the tx bitrate line ("80MHz"), None for 20 MHz legacy
    tx_retries: int | None
    tx_failed: int | None


@dataclass(frozen=True, slots=True)
class IwInfo:
    """The fields of ``iw dev IFACE info`` this backend uses. dBm, MHz."""

    txpower_dbm: float | None
    freq_mhz: float | None
    width_mhz: float | None


_NUM = r"(-?\d+(?:\.\d+)?)"


def _first_float(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def _int_field(name: str, block: str) -> int | None:
    m = re.search(rf"^\s*{name}:\s*(\d+)", block, re.M)
    return int(m.group(1)) if m else None


def parse_station_dump(text: str) -> list[Station]:
    """Every station in ``iw dev IFACE station dump`` output (empty list when none)."""
    stations = []
    blocks = re.split(r"^(?=Station )", text, flags=re.M)
    for block in blocks:
        m = re.match(r"Station (.+?) \(on ", block)
        if not m:
            continue
        tx_line = re.search(r"^\s*tx bitrate:\s*(.*)$", block, re.M)
        width = None
        if tx_line:
            w = re.search(r"(\d+)MHz", tx_line.group(1))
            width = float(w.group(1)) if w else None
        stations.append(Station(
            mac=m.group(1),
            # "signal:  \t-62 [-62, -71] dBm": the first number is the combined signal
            signal_dbm=_first_float(rf"(?m)^\s*signal:\s*{_NUM}", block),
            signal_avg_dbm=_first_float(rf"(?m)^\s*signal avg:\s*{_NUM}", block),
            tx_bitrate_mbit=_first_float(rf"(?m)^\s*tx bitrate:\s*{_NUM}", block),
            rx_bitrate_mbit=_first_float(rf"(?m)^\s*rx bitrate:\s*{_NUM}", block),
            width_mhz=width,
            tx_retries=_int_field("tx retries", block),
            tx_failed=_int_field("tx failed", block),
        ))
    return stations


def parse_iw_info(text: str) -> IwInfo:
    """``txpower``, channel frequency and width from ``iw dev IFACE info`` output."""
    return IwInfo(
        txpower_dbm=_first_float(rf"(?m)^\s*txpower\s+{_NUM}\s*dBm", text),
        freq_mhz=_first_float(r"(?m)^\s*channel\s+\d+\s+\((\d+(?:\.\d+)?) MHz\)", text),
        width_mhz=_first_float(r"width:\s*(\d+(?:\.\d+)?)\s*MHz", text),
    )


def txpower_mbm(power_w: float) -> int:
    """The ``iw ... set txpower fixed`` argument (mBm, whole dBm) for ``power_w`` watts."""
    dbm = 10.0 * math.log10(max(power_w, 1e-6) * 1e3)
    return round(max(dbm, POWER_FLOOR_DBM)) * 100


class WifiChannel(Channel):
    """The real Wi-Fi radio of ``iface``: link quality in, transmit power out (module doc)."""

    kind = "wifi"
    modelled = False

    def __init__(self, iface: str, *, iw: str = "iw", poll_s: float = 1.0) -> None:
        super().__init__()
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,15}", iface):
            raise ChannelSpecError(f"not an interface name: {iface!r}")
        self.iface = iface
        self.iw = iw
        self.poll_s = poll_s
        self.station: Station | None = None
        self.info: IwInfo | None = None
        self.p_max_w: float | None = None  # the power the interface had when opened
        self.power_control = "untried"  # "applied" | "ignored" | "refused: ..." | "untried"
        self._set_mbm: int | None = None
        self._poller: asyncio.Task[None] | None = None

    def describe(self) -> str:
        s = self.station
        sig = f"{s.signal_dbm:g} dBm" if s and s.signal_dbm is not None else "no station"
        return f"wifi {self.iface} ({sig}, power control {self.power_control})"

    def _iw(self, *args: str) -> str:
        try:
            out = subprocess.run([self.iw, "dev", self.iface, *args], capture_output=True,
                                 text=True, timeout=IW_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OSError(f"{self.iw} dev {self.iface} {' '.join(args)}: {exc}") from exc
        if out.returncode != 0:
            raise OSError(f"{self.iw} dev {self.iface} {' '.join(args)}: "
                          f"{(out.stderr or out.stdout).strip()}")
        return out.stdout

    def _poll(self) -> None:
        stations = parse_station_dump(self._iw("station", "dump"))
        self.info = parse_iw_info(self._iw("info"))
        if stations:
            self.station = stations[0]  # a client interface has one station: its AP

    async def async_open(self) -> None:
        await asyncio.to_thread(self._poll)
        if self.info is None or self.info.txpower_dbm is None:
            raise OSError(f"{self.iface}: `iw dev {self.iface} info` shows no txpower")
        self.p_max_w = dbm_to_w(self.info.txpower_dbm)
        self._poller = asyncio.create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await asyncio.to_thread(self._poll)
            except OSError as exc:
                log.info("wifi poll failed: %s", exc)

    async def async_close(self) -> None:
        task, self._poller = self._poller, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def link(self) -> LinkState:
        info, st = self.info, self.station
        p_max = self.p_max_w or 0.1
        width = (st.width_mhz if st and st.width_mhz else None) or (
            info.width_mhz if info and info.width_mhz else 20.0)
        n0 = dbm_to_w(NOISE_DBM_PER_HZ)
        tx_dbm = info.txpower_dbm if info and info.txpower_dbm is not None else 20.0
        sig = None
        if st is not None:
            sig = st.signal_avg_dbm if st.signal_avg_dbm is not None else st.signal_dbm
        gain = dbm_to_w(sig) / dbm_to_w(tx_dbm) if sig is not None else 1e-9
        return LinkState(width * 1e6, n0, gain, gain, p_max)

    def _apply(self, mbm: int) -> None:
        try:
            self._iw("set", "txpower", "fixed", str(mbm))
            self.info = parse_iw_info(self._iw("info"))
        except OSError as exc:
            self.power_control = f"refused: {exc}"
            return
        got = self.info.txpower_dbm
        self.power_control = "applied" if got is not None and abs(got * 100 - mbm) < 100 else (
            "ignored")

    async def async_send(self, nbytes: int, *, share: float, power: SlotPower,
                         until: float | None = None) -> TxReport:
        """Set the radio's power for this message (when it moved by POWER_STEP_DB or more);
        the bytes themselves pace at the radio's own rate once written to the socket."""
        g = self.link().gain
        mbm = txpower_mbm(power.step(g))
        if not self.power_control.startswith("refused") and (
            self._set_mbm is None or abs(mbm - self._set_mbm) >= POWER_STEP_DB * 100
        ):
            self._set_mbm = mbm
            await asyncio.to_thread(self._apply, mbm)
        self.bytes_sent += nbytes
        return TxReport(nbytes, True, 0.0, 0.0, 0, asyncio.get_running_loop().time())
