"""The connection limits of an HTTP server (the edge's and ``ondevice serve``'s): their
defaults and their flags. ``ondevice.common.http_guard`` enforces them; this module imports
nothing heavy, so that ``--help`` stays quick."""

from __future__ import annotations

import argparse

from ondevice.common import argtypes

HEADER_TIMEOUT_S = 10.0  # a new connection must send its request head within this
MAX_PENDING_CONNECTIONS = 64  # connections still sending their first request head
KEEPALIVE_TIMEOUT_S = 75.0  # idle HTTP connection (and its next request head)


def add_guard_flags(g: argparse._ActionGroup | argparse.ArgumentParser) -> None:
    """``--header-timeout``, ``--max-pending-connections`` and ``--keepalive-timeout`` (to
    ``header_timeout``, ``max_pending_connections``, ``keepalive_timeout``)."""
    g.add_argument("--header-timeout", type=argtypes.positive_float, default=HEADER_TIMEOUT_S,
                   help="seconds a new connection has to send its request head "
                   f"(default {HEADER_TIMEOUT_S:g})")
    g.add_argument("--max-pending-connections", type=argtypes.positive_int,
                   default=MAX_PENDING_CONNECTIONS,
                   help="connections still sending their request head; more are refused "
                   f"(default {MAX_PENDING_CONNECTIONS})")
    g.add_argument("--keepalive-timeout", type=argtypes.positive_float,
                   default=KEEPALIVE_TIMEOUT_S,
                   help="seconds an idle HTTP connection is kept for its next request "
                   f"(default {KEEPALIVE_TIMEOUT_S:g})")
