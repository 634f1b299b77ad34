"""The ``model-export dnn`` command group: ``split``, ``train-digits``, ``ship-digits``,
``quantize``.

Parsing only: each handler calls one function of the package, prints progress lines on stderr
and a short summary on stdout. Bad input raises ExportError (exit status 2 in `export.cli`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export._paths import check_output_file
from export.dnn import KNOWN_MODELS
from ondevice.common.argtypes import non_negative_int as _non_negative_int
from ondevice.common.argtypes import positive_int as _positive_int


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 3,224,224: {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"dimensions must be >= 1: {text!r}")
    return values


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 127,127,127: {text!r}") from None


def _run_split(args: argparse.Namespace) -> int:
    from export.dnn._split import parse_splits, split_model

    result = split_model(
        args.model,
        Path(args.out),
        splits=parse_splits(args.splits),
        calib=args.calib,
        n_eval=args.eval,
        seed=args.seed,
        threads=args.threads,
        importance_samples=args.importance_samples,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        input_shape=args.input_shape,
        mean=args.mean,
        std=args.std,
        calib_data=Path(args.calib_data) if args.calib_data else None,
        announce=_say,
    )
    print(result.table())
    print(
        f"wrote {len(result.profile['splits'])} head/tail pairs, model.onnx and "
        f"{result.profile_path} in {result.seconds:.1f} s"
    )
    return 0


def _run_train_digits(args: argparse.Namespace) -> int:
    from export.dnn._digits import default_cache_dir, load_or_train_digits, save_torchscript

    if args.out:  # before training
        check_output_file(Path(args.out), example="digits-cnn.pt")
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    model = load_or_train_digits(cache, args.seed, force=args.force, announce=_say)
    state = "trained" if model.trained else "cached"
    print(
        f"digits-cnn seed {args.seed} ({state}, {model.path}): held-out accuracy "
        f"{model.test_accuracy:.4f}"
    )
    if args.out:
        out = save_torchscript(model.module, Path(args.out))
        print(f"wrote TorchScript {out} (input [N, 1, 8, 8] = raw 0..16 / 16)")
    return 0


def _run_quantize(args: argparse.Namespace) -> int:
    from export.dnn._quant import quantize_onnx_file

    report = quantize_onnx_file(
        Path(args.inp),
        Path(args.calib),
        Path(args.out),
        calib=args.max_samples,
        seed=args.seed,
        threads=args.threads,
    )
    print(report.summary())
    return 0


def _run_ship_digits(args: argparse.Namespace) -> int:
    from export.dnn._ship import ship_digits

    result = ship_digits(Path(args.out), cache_dir=Path(args.cache_dir) if args.cache_dir
                         else None, announce=_say)
    print(result.summary())
    return 0


def add_dnn(sub: argparse._SubParsersAction) -> None:
    """Add ``dnn`` and its subcommands to the top-level subparsers `sub`."""
    dnn = sub.add_parser(
        "dnn",
        help="split CNNs into INT8 ONNX heads and fp32 tails with a profile (ENACHI)",
        description="Prepare split DNNs for the device (INT8 heads) and the edge (fp32 tails). "
        "See docs/export-dnn.md.",
    )
    dnn_sub = dnn.add_subparsers(dest="dnn_command", metavar="COMMAND", required=True)
    _add_split(dnn_sub)
    _add_train_digits(dnn_sub)
    _add_ship_digits(dnn_sub)
    _add_quantize(dnn_sub)


def _add_split(dnn_sub: argparse._SubParsersAction) -> None:
    """Add ``dnn split`` (handler `_run_split`) to the ``dnn`` subparsers `dnn_sub`."""
    s = dnn_sub.add_parser(
        "split",
        help="write head_s.onnx (INT8), tail_s.onnx (fp32) per split point and profile.json",
        description=(
            "Export MODEL to ONNX, find its block boundaries, and write per split point s "
            "DIR/head_s.onnx (INT8 static QDQ, per-channel, calibrated on real data) and "
            "DIR/tail_s.onnx (fp32), plus DIR/model.onnx and DIR/profile.json (latencies, "
            "FLOPs, feature sizes, 8-bit feature parameters, channel importance, accuracy vs "
            "fraction of channels received). Checks head+tail == full model."
        ),
    )
    s.add_argument(
        "--model",
        required=True,
        metavar="NAME|PATH.pt",
        help=f"{' or '.join(KNOWN_MODELS)}, or a TorchScript / torch.export file",
    )
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    s.add_argument(
        "--splits",
        default="auto",
        metavar="auto|all|i,j,k",
        help="split points: auto (stage outputs worth splitting), all, or indices (default auto)",
    )
    s.add_argument(
        "--calib",
        type=_positive_int,
        metavar="N",
        help="calibration samples (default 256 digits, 64 image crops, all user samples)",
    )
    s.add_argument(
        "--eval",
        type=_positive_int,
        metavar="N",
        help="evaluation crops for image models (default 64; digits use the held-out split)",
    )
    s.add_argument("--seed", type=_non_negative_int, default=0, metavar="S", help="default 0")
    s.add_argument(
        "--threads",
        type=_non_negative_int,
        default=1,
        metavar="T",
        help="onnxruntime threads for latency figures (default 1; 0 = all cores)",
    )
    s.add_argument(
        "--importance-samples",
        type=_positive_int,
        default=8,
        metavar="K",
        help="calibration samples used to rank channels (default 8; cost 2*C*K tail runs)",
    )
    s.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="digits-cnn weight cache (default $COINFER_CACHE or ~/.cache/coinfer)",
    )
    s.add_argument(
        "--input-shape", type=_ints, metavar="C,H,W", help="input shape of a TorchScript model"
    )
    s.add_argument(
        "--mean", type=_floats, metavar="M,..", help="per-channel mean, raw pixel units (.pt)"
    )
    s.add_argument("--std", type=_floats, metavar="S,..", help="per-channel std, raw units (.pt)")
    s.add_argument(
        "--calib-data",
        metavar="DIR_OR_NPZ",
        help="a .pt model's own normalized inputs (.npz/.npy or a directory of them)",
    )
    s.set_defaults(handler=_run_split)


def _add_train_digits(dnn_sub: argparse._SubParsersAction) -> None:
    """Add ``dnn train-digits`` (handler `_run_train_digits`) to `dnn_sub`."""
    t = dnn_sub.add_parser(
        "train-digits",
        help="train (or load) the cached digits-cnn and report its held-out accuracy",
        description="Train digits-cnn on sklearn's load_digits (seeded, cached) and print its "
        "held-out accuracy; --out also writes it as TorchScript.",
    )
    t.add_argument("--seed", type=_non_negative_int, default=0, metavar="S", help="default 0")
    t.add_argument("--cache-dir", metavar="DIR", help="weight cache directory")
    t.add_argument("--force", action="store_true", help="retrain even if cached")
    t.add_argument("--out", metavar="FILE.pt", help="also save the model as TorchScript")
    t.set_defaults(handler=_run_train_digits)


def _add_ship_digits(dnn_sub: argparse._SubParsersAction) -> None:
    """Add ``dnn ship-digits`` (handler `_run_ship_digits`) to `dnn_sub`."""
    d = dnn_sub.add_parser(
        "ship-digits",
        help="write the digits data and digits-cnn split that ship inside coinfer",
        description="Write DIR/optdigits.npz (scikit-learn's load_digits as uint8, the UCI "
        "digits) and DIR/digits-cnn/ (dnn split --model digits-cnn, seed 0, auto splits), "
        "the files `ondevice classify --dataset digits` uses without scikit-learn or torch. "
        "`make digits-data` writes them into ondevice/dnn/digits.",
    )
    d.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    d.add_argument("--cache-dir", metavar="DIR", help="digits-cnn weight cache")
    d.set_defaults(handler=_run_ship_digits)


def _add_quantize(dnn_sub: argparse._SubParsersAction) -> None:
    """Add ``dnn quantize`` (handler `_run_quantize`) to `dnn_sub`."""
    q = dnn_sub.add_parser(
        "quantize",
        help="INT8 static QDQ quantization of your own ONNX model",
        description="Quantize an fp32 ONNX model (one input, fixed non-batch dimensions) to "
        "INT8 static QDQ, per-channel weights, MinMax-calibrated on your data, and compare it "
        "with the fp32 model on that data.",
    )
    q.add_argument("--in", dest="inp", required=True, metavar="M.onnx", help="fp32 model")
    q.add_argument(
        "--calib",
        required=True,
        metavar="DIR_OR_NPZ",
        help="normalized inputs: .npz, .npy, or a directory of them",
    )
    q.add_argument("--out", required=True, metavar="M_int8.onnx", help="output model")
    q.add_argument(
        "--max-samples", type=_positive_int, metavar="N", help="use at most N seeded samples"
    )
    q.add_argument("--seed", type=_non_negative_int, default=0, metavar="S", help="default 0")
    q.add_argument("--threads", type=_non_negative_int, default=1, metavar="T", help="default 1")
    q.set_defaults(handler=_run_quantize)
