"""``ondevice meter``: a live power readout and a summary, for any meter SPEC.

:func:`run_meter` is the whole command; the CLI only parses ``--meter``, ``--seconds`` and
``--json`` and calls it with ``asyncio.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from typing import TYPE_CHECKING, TextIO

from ondevice.cli._interrupt import EXIT_INTERRUPTED, Aborted, run_interruptible
from ondevice.common import argtypes, jsonout

if TYPE_CHECKING:
    from hw import PowerMeter

HELP = "read a power meter live"

__all__ = ["run_meter"]

REFRESH_S = 0.25  # s between live-readout refreshes on a terminal
LINE_EVERY_S = 1.0  # s between readout lines when the output is not a terminal


def _live_line(meter: PowerMeter, t0_s: float, now_s: float, said: list[str]) -> str:
    s = meter.latest
    watts = f"{s.power_w:8.3f} W" if s else "       - W"
    volts = f"{s.voltage_v:7.3f} V" if s and s.voltage_v is not None else "      - V"
    amps = f"{s.current_a:7.4f} A" if s and s.current_a is not None else "      - A"
    joules = meter.energy_j(t0_s, now_s) if s else 0.0
    line = (f"{meter.kind}: {watts} {volts} {amps} {joules:10.3f} J "
            f"{meter.sample_rate_hz:5.1f} Hz  {now_s - t0_s:6.1f} s")
    if meter.last_error:  # say why there is no reading (once per reason), and that it retries
        why = "" if said and said[-1] == meter.last_error else f": {meter.last_error}"
        if why:
            said.append(meter.last_error)
        line += f"  no reading{why}; retrying"
    return line


def summarize(meter: PowerMeter, t0_s: float, t1_s: float) -> dict[str, object]:
    """The summary dict printed at the end (also the JSON object)."""
    seconds = max(t1_s - t0_s, 0.0)
    energy_j = meter.energy_j(t0_s, t1_s)
    samples = meter.integrator.powers_w(t0_s, t1_s)
    return {
        "source": meter.kind,
        "measured": meter.measured,
        "seconds": round(seconds, 3),
        "energy_j": round(energy_j, 4) if samples else None,  # no reading is not 0 J
        "mean_w": round(energy_j / seconds, 4) if samples and seconds > 0 else None,
        "samples": len(samples),
        "sample_rate_hz": round(len(samples) / seconds, 2) if seconds > 0 else 0.0,
        "min_w": round(min(samples), 4) if samples else None,
        "max_w": round(max(samples), 4) if samples else None,
        "coverage": round(meter.coverage(t0_s, t1_s), 4),
        "gaps": [[round(a - t0_s, 3), round(b - t0_s, 3)] for a, b in meter.gaps(t0_s, t1_s)],
        "reconnects": meter.reconnects,
        "bad_frames": meter.bad_frames,
        "error": None if samples else (meter.last_error or "no samples"),
    }


def _print_summary(summary: dict[str, object], out: TextIO) -> None:
    gaps = summary["gaps"]
    assert isinstance(gaps, list)
    label = "measured" if summary["measured"] else "modelled"
    if summary["energy_j"] is None:
        print(f"{summary['source']}: no reading in {summary['seconds']} s "
              f"({summary['error']})", file=out)
        return
    print(f"{summary['source']} ({label}): {summary['energy_j']} J over {summary['seconds']} s, "
          f"mean {summary['mean_w']} W, {summary['samples']} samples "
          f"({summary['sample_rate_hz']} Hz), coverage {summary['coverage']:.0%}, "
          f"{len(gaps)} gap(s)", file=out)


async def run_meter(spec: str, seconds: float | None, as_json: bool,
                    out: TextIO = sys.stdout, stop: asyncio.Event | None = None) -> int:
    """Read ``spec`` for ``seconds`` (or until ``stop`` is set or the task is cancelled, e.g.
    Ctrl-C) and print a summary.

    On a terminal the readout (W, V, A, cumulative J, sample rate) refreshes in place;
    otherwise a readout line is printed every second unless ``as_json``. With ``as_json``
    the last line is one JSON object (see :func:`summarize`). While the meter gives no
    reading the readout says why and that it retries. Returns the exit status: 0; 1 when the
    meter gave no reading at all (energy is then null, not 0); 130 when ``stop`` was set; 2
    for a bad SPEC or a meter that cannot start (message on stderr).
    """
    from hw import MeterError, open_meter

    try:
        meter = open_meter(spec)
    except MeterError as err:
        print(f"ondevice meter: {err}", file=sys.stderr)
        return 2
    tty = out.isatty()
    try:
        async with meter:
            t0_s = time.monotonic()
            end_s = t0_s + seconds if seconds is not None else None
            last_line_s = t0_s
            said: list[str] = []  # the reasons for no reading the readout gave so far
            try:
                while (end_s is None or time.monotonic() < end_s) and not (
                    stop is not None and stop.is_set()
                ):
                    now_s = time.monotonic()
                    step_s = REFRESH_S if end_s is None else min(REFRESH_S, end_s - now_s)
                    if stop is None:
                        await asyncio.sleep(max(step_s, 0.0))
                    else:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(stop.wait(), max(step_s, 0.0))
                    now_s = time.monotonic()
                    if tty:
                        out.write("\r\x1b[2K" + _live_line(meter, t0_s, now_s, said))
                        out.flush()
                    elif not as_json and now_s - last_line_s >= LINE_EVERY_S:
                        last_line_s = now_s
                        print(_live_line(meter, t0_s, now_s, said), file=out, flush=True)
            except asyncio.CancelledError:  # Ctrl-C under asyncio.run: still summarize
                task = asyncio.current_task()
                if task is not None and hasattr(task, "uncancel"):  # 3.11+: request handled
                    task.uncancel()
            t1_s = time.monotonic() if end_s is None else min(time.monotonic(), end_s)
            summary = summarize(meter, t0_s, t1_s)
    except MeterError as err:
        print(f"ondevice meter: {err}", file=sys.stderr)
        return 2
    if tty:
        out.write("\r\x1b[2K")
    _print_summary(summary, out)
    if as_json:
        print(jsonout.dumps(summary), file=out, flush=True)
    if summary["error"] is not None:
        print(f"ondevice meter: no reading from {spec} (why: above)", file=sys.stderr)
        return 1
    return 130 if stop is not None and stop.is_set() else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "meter",
        help=HELP,
        description="Show live power readings (W, V, A, cumulative J, sample rate).",
    )
    p.add_argument("--meter", required=True, help="meter SPEC, e.g. um25c:/dev/rfcomm0 or sim")
    p.add_argument("--seconds", type=argtypes.positive_float, default=None,
                   help="stop after this many seconds (default: at Ctrl-C)")
    p.add_argument("--json", action="store_true", help="end with one JSON object on one line")


def run(args: argparse.Namespace) -> int:
    from hw import MeterSpecError

    if not args.verbose:  # the readout and the summary say why a meter gives no reading
        logging.getLogger("hw").setLevel(logging.ERROR)
    try:
        status, _ = run_interruptible(
            lambda stop: run_meter(args.meter, args.seconds, args.json, stop=stop),
            what="summarizing",
        )
    except MeterSpecError as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 2
    except Aborted:
        return EXIT_INTERRUPTED
    return status
