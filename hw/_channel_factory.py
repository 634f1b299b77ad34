"""``open_channel(spec)``: the radio named by a channel SPEC (``emulated:...``, ``wifi:IFACE``,
``none``), as `_factory.open_meter` is for meters. Apart from `_radio` so that the Wi-Fi backend
can build on `_radio`'s types without an import cycle."""

from __future__ import annotations

from typing import Any

from hw._radio import Channel, ChannelSpecError, EmulatedChannel, NullChannel
from hw._wifi import WifiChannel


def _num(kind: str, key: str, raw: str) -> Any:
    try:
        return int(raw) if key == "seed" else float(raw)
    except ValueError:
        raise ChannelSpecError(f"{kind} option {key}={raw!r}: not a number") from None


_EMULATED_KEYS = {"bw": "bw_mhz", "snr_db": "snr_db", "fading": "fading",
                  "coherence_ms": "coherence_ms", "seed": "seed", "p_max_w": "p_max_w",
                  "slot_ms": "slot_ms", "noise_dbm_hz": "noise_dbm_hz",
                  "circuit_w": "circuit_w"}
CHANNEL_KINDS = {
    "emulated": "emulated:bw=MHz,snr_db=DB,fading=rayleigh|none,coherence_ms=MS,seed=N,"
                "p_max_w=W,slot_ms=MS,circuit_w=W  Rayleigh block fading, Shannon rate, paces "
                "the stream, charges (p + circuit_w) * airtime",
    "wifi": "wifi:IFACE[,iw=PATH,poll_s=S]  Linux Wi-Fi: link from `iw dev IFACE station dump`,"
            " power by `iw dev IFACE set txpower fixed` (root)",
    "none": "none  no pacing (as fast as the link allows)",
}


def open_channel(spec: str) -> Channel:
    """A channel for a SPEC (module doc; not opened: use ``async with``)."""
    text = spec.strip()
    head, _, rest = text.partition(":")
    kind = head.strip().lower()
    if kind not in CHANNEL_KINDS:
        raise ChannelSpecError(f"unknown channel kind {kind!r} in {spec!r}; valid:\n  "
                               + "\n  ".join(CHANNEL_KINDS.values()))
    parts = [p.strip() for p in rest.split(",") if p.strip()]
    arg = parts.pop(0) if parts and "=" not in parts[0] else None
    opts: dict[str, str] = {}
    for p in parts:
        key, eq, value = p.partition("=")
        if not eq:
            raise ChannelSpecError(f"option {p!r} in {spec!r} is not key=value")
        opts[key.strip()] = value.strip()
    if kind == "none":
        if arg or opts:
            raise ChannelSpecError("none takes no arguments")
        return NullChannel()
    if kind == "wifi":
        if not arg:
            raise ChannelSpecError("wifi needs an interface: wifi:wlan0")
        unknown = set(opts) - {"iw", "poll_s"}
        if unknown:
            raise ChannelSpecError(f"unknown wifi option(s) {sorted(unknown)}; valid: iw, poll_s")
        return WifiChannel(arg, iw=opts.get("iw", "iw"),
                           poll_s=_num(kind, "poll_s", opts.get("poll_s", "1.0")))
    if arg:
        raise ChannelSpecError(f"emulated takes only key=value options, got {arg!r}")
    kwargs: dict[str, Any] = {}
    for key, raw in opts.items():
        if key not in _EMULATED_KEYS:
            raise ChannelSpecError(f"unknown emulated option {key!r}; valid: "
                                   + ", ".join(_EMULATED_KEYS))
        kwargs[_EMULATED_KEYS[key]] = raw if key == "fading" else _num(kind, key, raw)
    return EmulatedChannel(**kwargs)
