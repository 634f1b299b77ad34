"""The flags ``ondevice generate`` and ``ondevice serve`` share, and the ``Device`` they make.

Both commands run the same ``ondevice.llm.device.Device``: the draft, the edges (explicit,
``--edge URL[,URL...]``, or discovered), the drafting policy and the meter are set by the same
flags with the same checks, so a mistake is the same usage error (exit 2) in both.
"""

from __future__ import annotations

import argparse
from typing import Any

from ondevice.cli._edge_access import add_edge_access, edge_access_error, read_token
from ondevice.common import argtypes

DEFAULT_TOP_K = 32


def add_device_flags(p: argparse.ArgumentParser) -> None:
    """--draft, the edge and discovery flags, the policy, the meter, the draft's context."""
    from ondevice.llm.policy_names import DEFAULT_V, POLICIES

    p.add_argument("--draft", required=True, help="draft model, a GGUF file")
    p.add_argument(
        "--edge", type=argtypes.edge_urls, metavar="URL[,URL...]",
        help="edge URL, e.g. http://192.168.1.20:8470, or several separated by commas: each "
        "generation goes to the one with the lowest expected wait and moves to another if its "
        "edge dies or drains (default: find edges with zeroconf)",
    )
    add_edge_access(p)
    d = p.add_mutually_exclusive_group()
    d.add_argument("--discover", action="store_true",
                   help="with --edge: also browse zeroconf, to resume on another edge if it is "
                   "lost (without --edge, discovery is the default)")
    d.add_argument("--no-discover", action="store_true",
                   help="never browse zeroconf; without --edge, run on the draft alone")
    p.add_argument("--require-edge", action="store_true",
                   help="fail (exit 1, with the edge's reason) instead of finishing on the draft "
                   "alone when no edge can be used")
    p.add_argument("--policy", default="gelato", choices=POLICIES,
                   help="drafting policy (default gelato)")
    p.add_argument("--gamma", type=argtypes.positive_int, default=4,
                   help="tokens per round for --policy fixed (at most the edge's limit)")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--power-budget", type=argtypes.positive_float, metavar="W",
                   help="gelato: long-term average device power budget, watts")
    b.add_argument("--energy-per-token", type=argtypes.positive_float, metavar="J",
                   help="gelato: long-term device energy budget per generated token, joules")
    p.add_argument("--draft-ahead", type=argtypes.non_negative_int, default=None, metavar="N",
                   help="draft while a round is in flight, on the bet that all of it is "
                   "accepted: 0 never; N > 0 with --policy fixed, N tokens ahead of every "
                   "round (default: gelato decides per round, fixed drafts none ahead)")
    p.add_argument("--V", dest="v", type=argtypes.positive_float, default=DEFAULT_V,
                   help=f"gelato: throughput-vs-energy weight, J per token (default {DEFAULT_V});"
                   " larger V favours tokens/s, smaller V tracks the budget more tightly")
    p.add_argument(
        "--top-k",
        type=argtypes.positive_int,
        default=DEFAULT_TOP_K,
        help="support of the truncated draft distribution sent per drafted token"
        f" (default {DEFAULT_TOP_K})",
    )
    p.add_argument(
        "--meter",
        default="sim",
        help="power meter SPEC, e.g. um25c:/dev/rfcomm0, ina219-serial:/dev/ttyACM0, jetson, "
        "rapl, sim (default sim: a power model, reported as modelled)",
    )
    p.add_argument("--meter-optional", action="store_true",
                   help="run even if the meter gives no reading (energy reported as none); "
                   "by default a meter that gives none within 3 s is an error")
    p.add_argument("--threads", type=argtypes.positive_int, default=None,
                   help="draft threads (default: the model's sidecar, else all cores)")
    p.add_argument("--n-ctx", type=argtypes.positive_int, default=None,
                   help="draft context tokens (default: the model's sidecar, else 4096)")
    p.add_argument("--edge-timeout", type=argtypes.positive_float, default=15.0,
                   help="seconds per edge reply")


def device_from_args(args: argparse.Namespace) -> Any:
    """The (unopened) ``Device`` the flags describe. Raises ValueError, worded for the
    command line, for a usage error (exit 2)."""
    from ondevice.llm.device import Device, draft_config
    from ondevice.llm.generate import EdgePlan
    from ondevice.llm.policies import PolicyConfig

    if (args.power_budget is not None or args.energy_per_token is not None) and (
        args.policy != "gelato"
    ):
        raise ValueError("--power-budget/--energy-per-token are for --policy gelato")
    token = read_token(args.token_file)
    problem = edge_access_error(args, token)
    if problem:
        raise ValueError(problem)
    edge = EdgePlan(
        urls=args.edge or (),
        discover=(args.discover or args.edge is None) and not args.no_discover,
        interfaces=tuple(args.interface),
        site=args.site,
        token=token,
        fingerprint=args.edge_fingerprint,
        allow_plaintext_token=args.allow_plaintext_token,
        require_edge=args.require_edge,
        timeout_s=args.edge_timeout,
        browse_s=args.browse,
    )
    policy = PolicyConfig(args.policy, gamma=args.gamma, v=args.v,
                          power_budget_w=args.power_budget,
                          energy_per_token_j=args.energy_per_token, draft_ahead=args.draft_ahead)
    return Device(
        args.draft,
        edge=edge,
        policy=policy,
        meter=args.meter,
        require_meter=not args.meter_optional,
        top_k=args.top_k,
        llama_config=draft_config(args.draft, n_ctx=args.n_ctx, n_threads=args.threads),
    )


def runtime_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "could not run" (exit 1 with the message), not a bug."""
    from hw import MeterSpecError
    from ondevice.common import wire
    from ondevice.common.llama_runtime import LlamaError
    from ondevice.common.model_sidecar import SidecarError

    return (FileNotFoundError, LlamaError, MeterSpecError, ValueError, wire.EdgeError,
            SidecarError)
