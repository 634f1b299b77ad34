"""Hardware profiles (device, edge) and the cost of one speculative round on them. Pure.

A device profile says how fast and at what power the device drafts, what it draws while it
waits, what its radio costs per byte and per packet, and its link (uplink, downlink, RTT). An
edge profile says how long the edge's target takes to evaluate b positions in one pass (a
round's drafted tokens plus one): either a line t0 + k * b ms, or one position's time times a
published table of the relative cost of 1..n positions (llama.cpp's kernels make that cost a
staircase, not a line), continued past the table at a stated slope. Every number carries its
source in the JSON file (``profiles/*.json``, keys of docs/hardware-profiles.md).

Frame sizes are exact: they are the lengths of the frames ``ondevice.common.wire`` encodes, which is
what the ``sim`` meter counts on a real run (its radio model is per message byte and per
1460-byte packet, as here).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ondevice.bench._profile_names import profile_names
from ondevice.common import wire

MSS_BYTES = 1460  # payload of one TCP segment; as hw._activity.MSS_BYTES (1500 B MTU)
SESSION_ID = "0" * 16  # the edge's session ids are 16 hex digits (secrets.token_hex(8))
_EXAMPLE_TOKEN = 262_143  # a large id: msgpack encodes it at full width, as most Gemma ids


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceProfile:
    """The device and its link. Milliseconds, watts, joules, Mbit/s."""

    name: str
    draft_ms_per_token: float  # one single-token draft evaluation
    prefill_ms_per_token: float  # each extra token of a batched evaluation (catch-up)
    draft_w: float  # device power while drafting
    wait_w: float  # device power while waiting for the edge
    tx_j_per_byte: float
    tx_j_per_packet: float
    rx_j_per_byte: float
    rx_j_per_packet: float
    uplink_mbit_s: float
    downlink_mbit_s: float
    rtt_ms: float
    sources: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeProfile:
    """The edge's cost of evaluating ``b`` positions in one pass (``verify_ms``), given either
    as a line, ``verify_t0_ms + verify_ms_per_token * b``, or as a table: ``verify_1_ms``
    (one position) times ``verify_rel[b - 1]`` (relative costs of 1..n positions, the first
    1.0), past the table ``verify_rel[-1] + verify_rel_slope * (b - n)``."""

    name: str
    verify_t0_ms: float = 0.0
    verify_ms_per_token: float = 0.0
    verify_1_ms: float = 0.0
    verify_rel: tuple[float, ...] = ()
    verify_rel_slope: float = 0.0
    sources: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        line = self.verify_t0_ms > 0 or self.verify_ms_per_token > 0
        if line == bool(self.verify_rel):
            raise ValueError(f"edge profile {self.name!r}: give verify_t0_ms and "
                             "verify_ms_per_token, or verify_1_ms and verify_rel")
        if self.verify_rel and (self.verify_rel[0] != 1.0 or self.verify_1_ms <= 0
                                or any(b < a for a, b in itertools.pairwise(self.verify_rel))):
            raise ValueError(f"edge profile {self.name!r}: verify_rel starts at 1.0 and never "
                             "decreases, and verify_1_ms is > 0")

    def verify_ms(self, positions: int) -> float:
        """Milliseconds to evaluate ``positions`` (>= 1) positions in one batched pass."""
        if not self.verify_rel:
            return self.verify_t0_ms + self.verify_ms_per_token * positions
        n = len(self.verify_rel)
        rel = (self.verify_rel[positions - 1] if positions <= n
               else self.verify_rel[-1] + self.verify_rel_slope * (positions - n))
        return self.verify_1_ms * rel


def load_profile(spec: str, kind: str) -> DeviceProfile | EdgeProfile:
    """A built-in profile by name, or a JSON file by path; ``kind`` is "device" or "edge".

    Raises ValueError for an unknown name, a wrong kind, or a missing or extra parameter.
    """
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
    else:
        entry = resources.files("ondevice.bench").joinpath("profiles", f"{spec}.json")
        if not entry.is_file():
            raise ValueError(f"unknown {kind} profile {spec!r}; built in: "
                             f"{', '.join(profile_names(kind))}, or a path to a .json file")
        data = json.loads(entry.read_text())
    if data.get("kind") != kind:
        raise ValueError(f"profile {spec!r} is a {data.get('kind')} profile, not a {kind} one")
    cls = DeviceProfile if kind == "device" else EdgeProfile
    params = data["params"]
    values: dict[str, Any] = {}
    for k, v in params.items():
        value = v["value"]
        numbers = [float(x) for x in value] if isinstance(value, list) else [float(value)]
        if not numbers or not all(math.isfinite(x) and x >= 0 for x in numbers):
            raise ValueError(f"profile {spec!r}: {k} must be finite numbers >= 0")
        values[k] = tuple(numbers) if isinstance(value, list) else numbers[0]
    try:
        return cls(name=data["name"], sources=params, **values)
    except TypeError as exc:
        raise ValueError(f"profile {spec!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class RoundCost:
    """One round on the device's clock and meter. Seconds, joules, bytes."""

    draft_s: float
    net_s: float  # RTT plus both frames' transfer
    verify_s: float
    round_s: float
    energy_j: float  # device energy over the whole round, radio included
    draft_energy_j: float  # of which while drafting
    tx_bytes: int
    rx_bytes: int
    ahead: int = 0  # tokens drafted ahead while the round was in flight
    ahead_energy_j: float = 0.0  # their device energy (drafting instead of waiting)


def _packets(n_bytes: int) -> int:
    return -(-n_bytes // MSS_BYTES)


class CostModel:
    """Round costs on a (device, edge) pair for frames of ``k`` probabilities per drafted token
    (``k = 1`` at temperature 0, the top-k otherwise). Memoized: a round's cost depends only on
    what it drafted and how many committed tokens the draft has to catch up on."""

    def __init__(self, device: DeviceProfile, edge: EdgeProfile, *, k: int = 1) -> None:
        self.device, self.edge, self.k = device, edge, k
        self._round = functools.lru_cache(maxsize=4096)(self._round_cost)

    # -- frames -----------------------------------------------------------------------------

    def round_frame_bytes(self, drafted: int) -> int:
        """Bytes of the ``round`` frame carrying ``drafted`` tokens and their top-k q."""
        k = self.k if drafted else 0
        return len(wire.encode(wire.Round(
            SESSION_ID, np.full(drafted, _EXAMPLE_TOKEN, np.int32),
            np.full((drafted, k), _EXAMPLE_TOKEN, np.int32), np.ones((drafted, k), np.float32),
        )))

    @staticmethod
    def verdict_frame_bytes() -> int:
        return len(wire.encode(wire.Verdict(16, _EXAMPLE_TOKEN, 12.5, 13.5)))

    @staticmethod
    def tokens_frame_bytes() -> int:
        return len(wire.encode(wire.Tokens(np.array([_EXAMPLE_TOKEN], np.int32), False, 6.5)))

    def _radio_j(self, tx: int, rx: int) -> float:
        d = self.device
        return (d.tx_j_per_byte * tx + d.tx_j_per_packet * _packets(tx)
                + d.rx_j_per_byte * rx + d.rx_j_per_packet * _packets(rx))

    # -- costs ------------------------------------------------------------------------------

    def verify_s(self, drafted: int) -> float:
        """The edge's batched evaluation of ``drafted + 1`` positions."""
        return self.edge.verify_ms(drafted + 1) / 1e3

    def draft_s(self, drafted: int, pending: int) -> float:
        """Drafting ``drafted`` tokens when ``pending`` committed tokens are not yet in the
        draft's cache: the first evaluation takes them in one batch (one token's time plus
        ``prefill_ms_per_token`` for each extra one), then one evaluation per further token.
        Nothing is evaluated when nothing is drafted (the catch-up waits for the next draft)."""
        if drafted <= 0:
            return 0.0
        d = self.device
        return (drafted * d.draft_ms_per_token + max(pending - 1, 0) * d.prefill_ms_per_token
                ) / 1e3

    def round(self, drafted: int, pending: int = 1, *, predrafted: int = 0,
              ahead: int = 0) -> RoundCost:
        """One round that sends ``drafted`` tokens, the first ``predrafted`` of them drafted
        ahead during the previous round (free now: the draft's cache already holds them, so
        no catch-up either), and drafts up to ``ahead`` more while this round is in flight:
        as many as fit in the wait (net + verify), each drawing drafting power instead of
        waiting power. The round's time does not grow: drafting ahead stops at the verdict."""
        return self._round(int(drafted), int(pending), int(predrafted), int(ahead))

    def ahead_fits(self, drafted: int) -> int:
        """Tokens the device can draft while a round of ``drafted`` tokens is in flight."""
        c = self._round(int(drafted), 1, 0, 0)
        return int((c.net_s + c.verify_s) * 1e3 // max(self.device.draft_ms_per_token, 1e-9))

    def _round_cost(self, drafted: int, pending: int, predrafted: int = 0,
                    ahead: int = 0) -> RoundCost:
        d = self.device
        tx, rx = self.round_frame_bytes(drafted), self.verdict_frame_bytes()
        fresh = max(drafted - predrafted, 0)
        draft_s = self.draft_s(fresh, 1 if predrafted else pending)
        net_s = d.rtt_ms / 1e3 + tx * 8 / (d.uplink_mbit_s * 1e6) + rx * 8 / (
            d.downlink_mbit_s * 1e6)
        verify_s = self.verify_s(drafted)
        round_s = draft_s + net_s + verify_s
        draft_e = d.draft_w * draft_s
        energy = draft_e + d.wait_w * (round_s - draft_s) + self._radio_j(tx, rx)
        n_ahead = 0
        if ahead > 0 and drafted > 0:
            n_ahead = min(ahead, int((net_s + verify_s) * 1e3
                                     // max(d.draft_ms_per_token, 1e-9)))
        ahead_e = n_ahead * d.draft_ms_per_token / 1e3 * d.draft_w
        energy += ahead_e - n_ahead * d.draft_ms_per_token / 1e3 * d.wait_w
        return RoundCost(draft_s, net_s, verify_s, round_s, energy, draft_e, tx, rx, n_ahead,
                         ahead_e)

    def device_only(self, n_tokens: int) -> tuple[float, float]:
        """(seconds, joules) for the draft alone to produce ``n_tokens``."""
        s = n_tokens * self.device.draft_ms_per_token / 1e3
        return s, s * self.device.draft_w

    def edge_only(self, n_tokens: int) -> tuple[float, float]:
        """(seconds, joules) on the device while the edge's target streams ``n_tokens`` (one
        ``tokens`` frame each, one evaluation of one position each, one RTT to start)."""
        d = self.device
        tx = len(wire.encode(wire.Generate(SESSION_ID, n_tokens)))
        per = self.tokens_frame_bytes()
        s = (d.rtt_ms / 1e3 + tx * 8 / (d.uplink_mbit_s * 1e6)
             + n_tokens * (self.verify_s(0) + per * 8 / (d.downlink_mbit_s * 1e6)))
        radio = self._radio_j(tx, 0) + n_tokens * self._radio_j(0, per)
        return s, d.wait_w * s + radio


__all__ = ["CostModel", "DeviceProfile", "EdgeProfile", "RoundCost", "load_profile",
           "profile_names"]
