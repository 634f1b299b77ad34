"""``ondevice classify``: arguments, and the call to `ondevice.dnn.run.run_classify`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ondevice.cli._edge_access import add_site, interface_error, read_token
from ondevice.cli._interrupt import EXIT_INTERRUPTED, Aborted, run_interruptible
from ondevice.common import argtypes, jsonout

HELP = "classify images with a DNN split between this device and an edge (ENACHI)"


def add_classify_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``classify`` to the ``ondevice`` parser."""
    from ondevice.dnn.policy import DEFAULT_V, POLICIES
    from ondevice.dnn.run import DATASETS
    from ondevice.dnn.shipped import DIGITS_DNN

    p = sub.add_parser(
        "classify",
        help=HELP,
        description="Run the INT8 head of a split DNN here and send its 8-bit feature to the "
        "edge progressively, channels in importance order, until the edge is sure enough, the "
        "deadline comes or all is sent; per task the policy picks the split and the transmit "
        "power under a long-term power budget. Prints one line per task and a summary.",
    )
    p.add_argument("--dnn", type=Path, metavar="DIR",
                   help="a `model-export dnn split` directory (the edge serves the same one; "
                   "default: the digits-cnn split that ships with coinfer, "
                   f"{DIGITS_DNN})")
    p.add_argument("--edge", type=argtypes.edge_url,
                   help="edge URL, e.g. http://192.168.1.20:8470 (default: find one with "
                   "zeroconf that serves this model)")
    p.add_argument("--no-discover", action="store_true",
                   help="never browse zeroconf; without --edge, run on the device")
    p.add_argument("--interface", action="append", default=[], metavar="IP",
                   help="browse zeroconf on the interface with this IPv4 address (repeatable)")
    add_site(p)
    p.add_argument("--token-file", type=Path,
                   help="bearer token for the edge (default: $COINFER_TOKEN)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, metavar="FILE",
                     help="one input: an image file, or a .npy in the model's raw units")
    src.add_argument("--dataset", choices=DATASETS,
                     help="digits: the held-out rows of the UCI digits that ship with coinfer, "
                     "with labels; samples: the export's evaluation inputs (digits: the same; "
                     "photos: fidelity to the unsplit model)")
    p.add_argument("--limit", type=argtypes.positive_int, metavar="N",
                   help="first N inputs of the dataset")
    p.add_argument("--policy", default="enachi", choices=POLICIES,
                   help="enachi (default) or a baseline")
    p.add_argument("--split", type=argtypes.non_negative_int, metavar="S",
                   help="fixed-split: the split point (default: least predicted latency); "
                   "enachi, no-progressive, constant-power: use only this split")
    p.add_argument("--deadline-ms", type=argtypes.positive_float, metavar="D",
                   help="each task is due D ms after it arrives (default: no deadline)")
    p.add_argument("--period-ms", type=argtypes.non_negative_float, metavar="T",
                   help="a task arrives every T ms (default: the deadline; 0 = back to back)")
    p.add_argument("--power-budget", type=argtypes.positive_float, metavar="W",
                   help="long-term average power the inference may add to the device (compute "
                   "above idle + radio), watts")
    p.add_argument("--V", dest="v", type=argtypes.positive_float, default=DEFAULT_V,
                   help="accuracy weight against the energy queue, in allowances "
                   f"(default {DEFAULT_V}); larger favours accuracy over the budget")
    p.add_argument("--meter", default="sim",
                   help="power meter SPEC (default sim: a power model, reported as modelled)")
    p.add_argument("--channel", default="none",
                   help="radio SPEC: emulated:bw=2,snr_db=10,fading=rayleigh,coherence_ms=50,"
                   "seed=0 | wifi:IFACE | none (default)")
    p.add_argument("--idle-w", type=argtypes.non_negative_float, metavar="W",
                   help="the device's idle power (default: sim's model, else measured 1 s)")
    p.add_argument("--device-slowdown", type=argtypes.positive_float, default=1.0, metavar="X",
                   help="emulate a device X times slower than the machine that profiled the "
                   "model (compute stretched, reported; default 1 = this device as it is)")
    p.add_argument("--threads", type=argtypes.positive_int, default=1,
                   help="onnxruntime threads (default 1)")
    p.add_argument("--stop-tolerance", type=argtypes.non_negative_float, default=0.01,
                   help="accuracy the entropy stop may give up against all channels, from the "
                   "profile's curve (default 0.01)")
    p.add_argument("--device-id", help="this device's name at the edge (default: random)")
    p.add_argument("--edge-timeout", type=argtypes.positive_float, default=5.0,
                   help="seconds per edge reply")
    p.add_argument("--quiet", action="store_true", help="no per-task lines")
    p.add_argument("--json", action="store_true", help="end with one JSON object on one line")


def run_classify_cmd(args: argparse.Namespace) -> int:
    """``ondevice classify``: exit 0, 1 on a failed run, 2 on bad arguments."""
    from hw import ChannelSpecError, MeterError
    from ondevice.common.dnn_profile import DnnProfileError, load_dnn
    from ondevice.common.wire import EdgeError
    from ondevice.dnn.run import (
        ClassifyRequest,
        format_summary,
        format_task,
        run_classify,
    )

    try:
        token = read_token(args.token_file)
        problem = interface_error(args.interface)
        if problem:
            raise ValueError(problem)
        if args.device_slowdown < 1:
            raise ValueError("--device-slowdown must be >= 1")
        if args.power_budget is not None and args.policy not in (
                "enachi", "no-progressive", "constant-power"):
            raise ValueError("--power-budget steers enachi, no-progressive and constant-power")
        if args.dnn is None:
            from ondevice.dnn.shipped import DIGITS_DNN

            args.dnn = DIGITS_DNN
        profile = load_dnn(args.dnn)
    except (OSError, ValueError) as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 2
    req = ClassifyRequest(
        dnn_dir=args.dnn, edge=args.edge, discover=not args.no_discover,
        interfaces=tuple(args.interface), site=args.site, token=token, image=args.image,
        dataset=args.dataset,
        limit=args.limit, policy=args.policy, deadline_ms=args.deadline_ms,
        period_ms=args.period_ms, power_budget_w=args.power_budget, v=args.v, split=args.split,
        meter=args.meter, channel=args.channel, idle_w=args.idle_w,
        device_slowdown=args.device_slowdown, threads=args.threads,
        stop_tolerance=args.stop_tolerance, edge_timeout_s=args.edge_timeout,
        device_id=args.device_id)
    out = sys.stderr if args.json else sys.stdout
    names = profile.label_names

    def on_task(rec: object) -> None:
        if not args.quiet:
            print(format_task(rec, names), file=out, flush=True)  # type: ignore[arg-type]

    try:
        report, interrupted = run_interruptible(
            lambda stop: run_classify(req, on_task=on_task, stop=stop),
            what="stopping after the task in flight")
    except (DnnProfileError, ChannelSpecError, MeterError, ValueError, ImportError,
            OSError, EdgeError) as exc:
        print(f"ondevice: {exc}", file=sys.stderr)
        return 1
    except Aborted:
        print("ondevice: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_summary(report), file=out)
    for e in report.errors:
        print(f"note: {e}", file=sys.stderr)
    if args.json:
        print(jsonout.dumps(report.to_dict()))
    return EXIT_INTERRUPTED if interrupted else 0
